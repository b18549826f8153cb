"""The lease reaper's schedule: a pass every two minutes from one flow run an hour, so the Runs
list gets 24 reaper runs a day instead of 720, in prefect.yaml and in ``flows.serve`` alike.
Pure: reads the yaml and builds the served deployments, no server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.lease_reaper import lease_reaper_flow

ROOT = Path(__file__).resolve().parents[1]
HOUR_S = 3600


@pytest.fixture
def prefect_harness() -> None:
    """No Prefect API: nothing here runs a flow."""


def _yaml_reaper() -> dict[str, Any]:
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    (reaper,) = [d for d in deployments if d["entrypoint"].startswith("flows.lease_reaper")]
    return dict(reaper)


def test_one_reaper_run_an_hour_passes_every_two_minutes_and_ends_before_the_next() -> None:
    reaper = _yaml_reaper()
    (schedule,) = reaper["schedules"]
    assert schedule["cron"] == "0 * * * *"  # 24 flow runs a day
    passes, every_s = reaper["parameters"]["passes"], reaper["parameters"]["every_s"]
    assert every_s == 120
    # The last pass starts before the hour is out with a pass's gap to spare, so the next
    # hour's run is not cancelled by the deployment's limit of 1 (CANCEL_NEW).
    assert (passes - 1) * every_s + every_s <= HOUR_S - every_s
    assert passes * every_s >= HOUR_S - 2 * every_s  # and no hour is left without passes


def test_serve_deploys_the_same_reaper_schedule_as_the_yaml() -> None:
    from flows.serve import build_deployments

    reaper = _yaml_reaper()
    (served,) = [d for d in build_deployments() if d.name == reaper["name"]]
    assert served.parameters == reaper["parameters"]
    assert [s.schedule.cron for s in served.schedules] == [reaper["schedules"][0]["cron"]]


@pytest.mark.parametrize(("passes", "every_s"), [(0, 120), (61, 120), (1, -1), (2, 3601)])
def test_out_of_range_passes_are_refused_before_any_work(passes: int, every_s: float) -> None:
    with pytest.raises(ValueError, match="passes must be"):
        lease_reaper_flow.fn(passes=passes, every_s=every_s)
