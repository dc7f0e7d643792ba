"""meterstream and meterstream-local are released together: one version, pinned both ways."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import connector
import meterstream_local

REPO = Path(__file__).resolve().parents[2]


def _project(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


def test_both_distributions_carry_one_version_and_pin_each_other() -> None:
    runtime = _project(REPO / "pyproject.toml")
    local = _project(REPO / "local" / "pyproject.toml")
    version = connector.__version__

    assert meterstream_local.__version__ == version
    assert f"meterstream=={version}" in local["dependencies"]
    assert runtime["optional-dependencies"]["local"] == [f"meterstream-local=={version}"]


def test_the_runtime_needs_none_of_the_local_tooling_dependencies() -> None:
    runtime = _project(REPO / "pyproject.toml")
    local = _project(REPO / "local" / "pyproject.toml")

    required = " ".join(runtime["dependencies"]).lower()
    for name in ("uvicorn", "rich", "testcontainers", "meterstream-local"):
        assert name not in required
    assert any(dep.startswith("uvicorn") for dep in local["dependencies"])
    assert "testcontainers" not in " ".join(local["dependencies"])
