"""The torch extra is pinned once: requirements-torch.lock is what pip installs here (run.sh), what
the Modal image installs, and within the ranges pyproject.toml declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import modal
import pytest
from packaging.requirements import Requirement

from config import get_settings
from modal_app.modal_config import IMAGE_PACKAGES, TORCH_IMAGE_PACKAGES, build_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: nothing here touches Prefect."""


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if re.match(r"^[A-Za-z0-9_.-]+==", line):
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def test_the_image_installs_exactly_the_torch_lock() -> None:
    lines = [
        line
        for line in (ROOT / "requirements-torch.lock").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert list(TORCH_IMAGE_PACKAGES) == lines
    assert {"torch", "torchvision", "safetensors", "peft"} <= set(
        _pins(ROOT / "requirements-torch.lock")
    )


def test_the_torch_lock_agrees_with_the_base_lock_and_the_extra() -> None:
    base, extra = _pins(ROOT / "requirements.lock"), _pins(ROOT / "requirements-torch.lock")
    disagree = {n: (base[n], extra[n]) for n in set(base) & set(extra) if base[n] != extra[n]}
    assert disagree == {}  # one environment can hold both sets
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in declared["optional-dependencies"]["torch"]:
        requirement = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert requirement.specifier.contains(extra[name]), (spec, extra[name])
    # The default install stays torch-free: the demo needs none of it.
    assert not any(Requirement(d).name == "torch" for d in declared["dependencies"])


def test_build_image_adds_the_torch_layer_and_a_teams_sources(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    installs: list[tuple[str, ...]] = []
    sources: list[tuple[str, ...]] = []
    real_install = modal.Image.uv_pip_install
    real_sources = modal.Image.add_local_python_source

    def install(self: modal.Image, *packages: Any, **kwargs: Any) -> modal.Image:
        installs.append(tuple(packages))
        return real_install(self, *packages, **kwargs)

    def add_sources(self: modal.Image, *modules: str, **kwargs: Any) -> modal.Image:
        sources.append(modules)
        return real_sources(self, *modules, **kwargs)

    monkeypatch.setattr(modal.Image, "uv_pip_install", install)
    monkeypatch.setattr(modal.Image, "add_local_python_source", add_sources)
    build_image(get_settings(model_python_sources="tests, config"))
    assert installs == [IMAGE_PACKAGES, TORCH_IMAGE_PACKAGES]
    assert sources == [("modal_app", "config", "tests")]
