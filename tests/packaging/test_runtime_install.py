"""The production install carries only production code.

The plain ``meterstream`` wheel is built from the repository and installed, with its
dependencies, into a fresh virtualenv (pip, from PyPI or its cache). That install must run
the connector, must not contain the local tooling or its dependencies (uvicorn, rich,
testcontainers, meterstream_local), and its local-tooling commands must say what to
install. The venv with the dependencies is cached per pyproject.toml digest under
``.meterstream/packaging/`` (the wheel itself is reinstalled on every run), so a warm run
takes seconds. The ``meterstream-local`` wheel is checked for its package data.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".meterstream" / "packaging"
#: What only the local tooling may use; none of it may be installed or referenced.
LOCAL_ONLY = ("uvicorn", "rich", "testcontainers", "meterstream_local")
#: A cold cache installs ~30 wheels; generous for a busy 2-core machine and a slow network.
PIP_TIMEOUT_SECONDS = 600
COMMAND_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class RuntimeInstall:
    """A venv holding the plain meterstream wheel and its dependencies, nothing else."""

    venv: Path
    wheel: Path
    workdir: Path  # outside the checkout, so the repository's connector/ is not importable

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *command: str | Path) -> subprocess.CompletedProcess[str]:
        environment = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "VIRTUAL_ENV", "STRIPE_API_KEY")
            and not key.startswith("METERSTREAM_")
        }
        environment["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{environment.get('PATH', '')}"
        return subprocess.run(
            [str(part) for part in command],
            cwd=self.workdir,
            env=environment,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )


def _pip(python: Path | str, *args: str | Path) -> None:
    """``python -m pip ARGS``, failing the test with pip's own output."""
    result = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, (
        f"pip {' '.join(map(str, args))}:\n{result.stdout}{result.stderr}"
    )


def _fresh_venv(path: Path, wheel: Path) -> None:
    """A new venv at ``path`` with ``wheel`` and its dependencies; ``path/.complete`` last."""
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    _pip(path / "bin" / "python", "install", "--quiet", wheel)
    (path / ".complete").touch()


@pytest.fixture(scope="module")
def runtime_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeInstall]:
    """Build the wheel of the checkout and install it into the (cached) runtime venv."""
    wheel_dir = tmp_path_factory.mktemp("wheel")
    _pip(sys.executable, "wheel", "--quiet", "--no-deps", "--wheel-dir", wheel_dir, REPO)
    [wheel] = wheel_dir.glob("meterstream-*.whl")
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    venv = CACHE / f"venv-{digest}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs of the suite share the cache
        if (venv / ".complete").exists():
            _pip(
                venv / "bin" / "python",
                "install",
                "--quiet",
                "--no-deps",
                "--force-reinstall",
                wheel,
            )
        else:
            for stale in CACHE.glob("venv-*"):
                shutil.rmtree(stale, ignore_errors=True)
            _fresh_venv(venv, wheel)
        yield RuntimeInstall(venv=venv, wheel=wheel, workdir=tmp_path_factory.mktemp("cwd"))


def test_the_wheel_holds_only_the_connector_package(runtime_install: RuntimeInstall) -> None:
    with zipfile.ZipFile(runtime_install.wheel) as wheel:
        names = wheel.namelist()
        [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
        requirements = [
            line.removeprefix("Requires-Dist: ")
            for line in wheel.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
    top_level = {name.split("/")[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"connector"}
    assert not [name for name in names if "emulator" in name or "localkafka" in name]
    unconditional = [req.lower() for req in requirements if "extra ==" not in req]
    assert unconditional
    for name in ("uvicorn", "rich", "testcontainers", "meterstream-local"):
        assert not [req for req in unconditional if req.startswith(name)], unconditional
    assert 'meterstream-local==0.1.0; extra == "local"' in requirements


def test_the_commands_of_production_run(runtime_install: RuntimeInstall) -> None:
    help_result = runtime_install.run("meterstream", "--help")
    assert help_result.returncode == 0, help_result.stderr
    for command in ("run", "check-config", "replay", "demo", "emulator", "local-kafka"):
        assert command in help_result.stdout
    replay_help = runtime_install.run("meterstream", "replay", "--help")
    assert replay_help.returncode == 0, replay_help.stderr
    assert "--dry-run" in replay_help.stdout

    check = runtime_install.run("meterstream", "check-config")
    assert check.returncode == 0, check.stderr
    assert "bootstrap_servers" in check.stdout

    imports = runtime_install.run(
        runtime_install.python,
        "-c",
        "import connector, connector.worker, connector.runner; print(connector.__file__)",
    )
    assert imports.returncode == 0, imports.stderr
    assert Path(imports.stdout.strip()).is_relative_to(runtime_install.venv)


def test_no_local_tooling_is_installed(runtime_install: RuntimeInstall) -> None:
    probe = runtime_install.run(
        runtime_install.python,
        "-c",
        "import importlib.util, json, sys; "
        "print(json.dumps({name: importlib.util.find_spec(name) is not None "
        "for name in sys.argv[1:]}))",
        *LOCAL_ONLY,
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == dict.fromkeys(LOCAL_ONLY, False)


def test_nothing_in_the_installed_connector_references_the_local_tooling(
    runtime_install: RuntimeInstall,
) -> None:
    located = runtime_install.run(
        runtime_install.python, "-c", "import connector; print(connector.__path__[0])"
    )
    assert located.returncode == 0, located.stderr
    package = Path(located.stdout.strip())
    sources = sorted(package.rglob("*.py"))
    assert package / "worker.py" in sources
    for source in sources:
        text = source.read_text(encoding="utf-8")
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.ImportFrom)
        }
        assert not imported & set(LOCAL_ONLY), source
        for name in ("uvicorn", "rich", "testcontainers"):
            assert not re.search(rf"\b{name}\b", text), f"{source} mentions {name}"
        if source.name != "cli.py":  # the lazy import of the local commands, by name
            assert "meterstream_local" not in text, source


@pytest.mark.parametrize(
    "argv",
    [("demo",), ("demo", "--records", "10"), ("emulator", "--help"), ("local-kafka",)],
)
def test_a_local_command_says_what_to_install(
    runtime_install: RuntimeInstall, argv: tuple[str, ...]
) -> None:
    result = runtime_install.run("meterstream", *argv)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"meterstream {argv[0]} needs the local tooling: pip install 'meterstream[local]' "
        "(or for a checkout: pip install ./local)"
    ]


def test_the_image_build_context_leaves_the_local_tooling_out() -> None:
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignored
    assert "local/" in ignored
    assert not [line for line in ignored if line.startswith("!") and "local" in line]
    copied = [  # from the build context (COPY --from=<stage> copies between stages)
        line.split()[1:-1]
        for line in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.startswith("COPY ") and not line.startswith("COPY --from=")
    ]
    assert copied
    assert {source for sources in copied for source in sources} <= {
        "pyproject.toml",
        "README.md",
        "connector",
    }


def test_the_local_wheel_carries_its_package_data_and_not_the_connector(
    tmp_path: Path,
) -> None:
    _pip(sys.executable, "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp_path, REPO / "local")
    [wheel] = tmp_path.glob("meterstream_local-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {
        "meterstream_local/py.typed",
        "meterstream_local/localkafka/pom.xml",
        "meterstream_local/localkafka/log4j2.xml",
        "meterstream_local/emulator/app.py",
        "meterstream_local/demo.py",
        "meterstream_local/samples.py",
    } <= names
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {
        "meterstream_local"
    }
