"""prefect.yaml for workers on other machines and in containers: ``prefect deploy`` records
nothing of the deployer's machine (no path, no ``{{ $PWD }}``), a process pool's pull steps clone
the repository and install the package, and the Docker deployment's image has the package (the
Dockerfile copies every package ``pyproject.toml`` ships). Docker itself is not run here (no
daemon in CI): the Dockerfile is checked as text.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import run_python

ROOT = Path(__file__).resolve().parent.parent
PROCESS_POOL = "boundary-inference-pool"
DOCKER_POOL = "boundary-inference-docker"
CLONE = "prefect.deployments.steps.git_clone"
INSTALL = "prefect.deployments.steps.pip_install_requirements"
VARIABLES = {
    "boundary_inference_repository": "https://deployer.example/boundary-inference.git",
    "boundary_inference_branch": "deployers-branch",
}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@pytest.fixture
def pools() -> Iterator[None]:
    """Both pools, and the repository variables set: set at deploy time, they must still be
    stored as templates (read on the worker when a run starts, not frozen by the deploy)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate, WorkPoolCreate

    with get_client(sync_client=True) as client:
        for name, kind in ((PROCESS_POOL, "process"), (DOCKER_POOL, "docker")):
            client.create_work_pool(WorkPoolCreate(name=name, type=kind), overwrite=True)
        for name, value in VARIABLES.items():
            client.create_variable(VariableCreate(name=name, value=value))
    yield
    with get_client(sync_client=True) as client:
        for name in (PROCESS_POOL, DOCKER_POOL):
            client.delete_work_pool(name)
        for name in VARIABLES:
            client.delete_variable_by_name(name)


@pytest.mark.usefixtures("shipped_deployments_lock", "pools")
def test_prefect_deploy_records_nothing_of_the_deployers_machine(tmp_path: Path) -> None:
    """``prefect deploy --all`` from the checkout (its ``PWD`` a directory of its own): every
    deployment's pull steps and job variables are free of paths; the process deployments clone
    and install the package; the Docker one pulls nothing and names its image."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    deployer_home = tmp_path / "deployer"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PREFECT_HOME=str(deployer_home),
        PWD=str(tmp_path),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    done = run_python(
        ["-m", "prefect", "--no-prompt", "deploy", "--all"], env=env, cwd=ROOT, timeout_s=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    with get_client(sync_client=True) as client:
        deployments = [
            d for d in client.read_deployments() if d.work_pool_name in {PROCESS_POOL, DOCKER_POOL}
        ]
        try:
            assert len(deployments) == len(config["deployments"]) == 5
            for deployment in deployments:
                recorded = [deployment.pull_steps or [], deployment.job_variables or {}]
                for text in _strings(recorded):
                    assert not text.startswith("/"), (deployment.name, text)
                    machine_texts = (str(ROOT), str(tmp_path), "$PWD", "set_working_directory")
                    for machine in (*machine_texts, *VARIABLES.values()):
                        assert machine not in text, (deployment.name, text)
                if deployment.work_pool_name == DOCKER_POOL:
                    assert deployment.pull_steps == []
                    assert deployment.job_variables["image"] == "boundary-inference:0.1.0"
                    env_vars = deployment.job_variables["env"]
                    assert env_vars["BOUNDARY_INFERENCE_EXECUTOR"] == "modal"
                    continue
                steps = deployment.pull_steps or []
                assert [next(iter(step)) for step in steps] == [CLONE, INSTALL], deployment.name
                clone, install = steps[0][CLONE], steps[1][INSTALL]
                # Read on the worker when the run starts, not resolved at deploy time.
                assert clone["repository"] == (
                    "{{ prefect.variables.boundary_inference_repository }}"
                )
                assert clone["branch"] == "{{ prefect.variables.boundary_inference_branch }}"
                assert install["directory"] == "{{ " + clone["id"] + ".directory }}"
                assert install["requirements_file"] == "requirements-worker.txt"
        finally:
            for deployment in deployments:
                client.delete_deployment(deployment.id)


def test_the_worker_requirements_install_the_pinned_set_and_the_package() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "requirements-worker.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # `.` is the clone (pip's working directory in the pull step), installed non-editable.
    assert lines == ["-r requirements.lock", "."]


def test_the_dockerfile_installs_every_package_the_project_ships() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = {
        pattern.rstrip("*")
        for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    text = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, flags=re.MULTILINE))
    assert copied == shipped
    assert "RUN pip install -r requirements.lock" in text
    assert "RUN pip install --no-deps ." in text  # non-editable: the package, not the source tree
    assert re.search(r"^USER \w+", text, flags=re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".state" in ignored and ".venv" in ignored
