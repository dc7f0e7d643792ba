"""Fixtures of the image tests: podman (installed on demand) and the image built once per session.

The figures that matter for CI time and for the README (base creation, build time, image
size, time to bill) are printed at the end of the run.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.image import podman as engine
from tests.integration.harness import REPO

#: What the image tests measured, printed by pytest_terminal_summary.
FIGURES: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.write_sep("-", "container image")
        terminalreporter.write_line(", ".join(f"{key}: {value}" for key, value in FIGURES.items()))


@pytest.fixture(scope="session")
def podman() -> engine.Podman:
    """The podman CLI on this suite's storage, with the test base image present.

    Installs podman with apt-get and makes the base with mmdebstrap when missing (minutes
    on a fresh machine, nothing later); skips only where podman cannot be installed.
    """
    started = time.monotonic()
    with engine.setup_lock():
        try:
            engine.ensure_installed()
        except engine.PodmanUnavailable as exc:
            pytest.skip(str(exc))
        cli = engine.Podman.configured()
        engine.ensure_base_image(cli)
    FIGURES["setup"] = f"{time.monotonic() - started:.1f} s"
    return cli


@pytest.fixture(scope="session")
def built_image(podman: engine.Podman) -> engine.BuiltImage:
    """The repository's Dockerfile built on the test base (cached layers reused)."""
    image = engine.build(podman, REPO, engine.BASE_IMAGE)
    FIGURES["build"] = f"{image.build_seconds:.1f} s"
    FIGURES["size"] = f"{image.size_bytes / 1e6:.0f} MB"
    return image
