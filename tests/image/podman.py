"""Podman on this machine, set up on demand, to build the repository's Dockerfile and run it.

CI has no Docker daemon and no image registry, so the image tests bring their own engine:

1. ``ensure_installed()``: podman and its helpers from Debian's apt (as root), once.
   ``PodmanUnavailable`` when that is impossible: the one reason the image tests skip.
2. ``Podman``: the CLI pointed at a configuration and a storage of its own under
   ``~/.cache/meterstream/podman`` (the machine's podman setup is left alone). runc and
   cgroupfs, because crun refuses this kind of VM's hybrid cgroups.
3. ``ensure_base_image()``: a Python base made from Debian packages with mmdebstrap and
   imported once (Docker Hub is out of reach), Debian's python3 + python3-venv.
4. ``build()``: ``podman build`` of the repository with that base, host networking only
   (the bridge network would change the machine's firewall), pip's index and CA bundle
   passed through from this machine's pip settings.

Everything is idempotent and cached; a file lock keeps parallel sessions from installing
or creating the base at the same time. Why and how: docs/image.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The same cache scripts/bootstrap.sh uses.
CACHE = Path(os.environ.get("METERSTREAM_CACHE") or Path.home() / ".cache" / "meterstream")
PODMAN_HOME = CACHE / "podman"
#: Debian packages: the engine, the base image builder, the runtime, and the --init process.
APT_PACKAGES = ("podman", "mmdebstrap", "runc", "uidmap", "catatonit")
#: The commands those packages must leave behind.
REQUIRED_COMMANDS = ("podman", "mmdebstrap", "runc", "catatonit")
#: The test base: Debian's Python 3.11, the Dockerfile's ``PYTHON_IMAGE`` stand-in.
BASE_IMAGE = "localhost/meterstream-test-base:bookworm-python3"
DEBIAN_SUITE = "bookworm"
DEBIAN_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
#: Generous bounds for a busy 2-core machine (apt and mmdebstrap download ~100 MB).
INSTALL_TIMEOUT_SECONDS = 900
BUILD_TIMEOUT_SECONDS = 900
#: The ulimits of this VM: containers asking for more fail to start.
DEFAULT_ULIMITS = ("nofile=20000:20000", "nproc=4096:4096")


class PodmanUnavailable(Exception):
    """Podman cannot be installed on this machine (the image tests skip, saying why)."""


class PodmanError(RuntimeError):
    """A podman command failed; the message holds the command and its output's tail."""


def ensure_installed() -> None:
    """Install the missing Debian packages (apt-get, as root), or raise PodmanUnavailable."""
    missing = [command for command in REQUIRED_COMMANDS if shutil.which(command) is None]
    if not missing:
        return
    why = f"podman cannot be installed here ({', '.join(missing)} missing)"
    if shutil.which("apt-get") is None:
        raise PodmanUnavailable(f"{why}: no apt-get; install {' '.join(APT_PACKAGES)} by hand")
    if os.geteuid() != 0:
        raise PodmanUnavailable(
            f"{why}: apt-get needs root; run `apt-get install {' '.join(APT_PACKAGES)}` as root"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", *APT_PACKAGES]):
        done = subprocess.run(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_SECONDS,
            check=False,
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise PodmanUnavailable(f"{why}: `{' '.join(command)}` failed: {' / '.join(tail)}")
    still = [command for command in REQUIRED_COMMANDS if shutil.which(command) is None]
    if still:
        raise PodmanUnavailable(f"{why}: apt-get installed no {', '.join(still)}")


@contextlib.contextmanager
def setup_lock() -> Iterator[None]:
    """One session at a time installs packages or creates the base image."""
    PODMAN_HOME.mkdir(parents=True, exist_ok=True)
    with (PODMAN_HOME / "setup.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Podman:
    """The podman CLI with this suite's configuration and storage."""

    env: dict[str, str]

    @classmethod
    def configured(cls) -> Podman:
        """Write the configuration files (every time: they are tiny) and point podman at them.

        Storage lives in the cache (the base image and build layers survive sessions); the
        run root is on /run when root (cleared at boot, as podman expects).
        """
        runtime_root = Path("/run") if os.geteuid() == 0 else Path(tempfile.gettempdir())
        run_dir = runtime_root / f"meterstream-podman-{os.geteuid()}"
        containers_conf = PODMAN_HOME / "containers.conf"
        storage_conf = PODMAN_HOME / "storage.conf"
        PODMAN_HOME.mkdir(parents=True, exist_ok=True)
        ulimits = ", ".join(f'"{limit}"' for limit in DEFAULT_ULIMITS)
        containers_conf.write_text(
            "[containers]\n"
            f"default_ulimits = [{ulimits}]\n"
            f'init_path = "{shutil.which("catatonit")}"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{run_dir / "libpod"}"\n'
        )
        storage_conf.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{PODMAN_HOME / "storage"}"\n'
            f'runroot = "{run_dir / "storage"}"\n'
        )
        env = {
            **os.environ,
            "CONTAINERS_CONF": str(containers_conf),
            "CONTAINERS_STORAGE_CONF": str(storage_conf),
        }
        return cls(env=env)

    def command(self, *args: str) -> list[str]:
        """The argv of ``podman ARGS`` (for Popen, with ``env=self.env``)."""
        return ["podman", *args]

    def run(self, *args: str, timeout: float = 120) -> str:
        """``podman ARGS`` to completion; its stdout, or PodmanError with the output's tail."""
        done = subprocess.run(
            self.command(*args),
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise PodmanError(f"podman {' '.join(args[:3])} ... exited {done.returncode}:\n{tail}")
        return done.stdout

    def image_id(self, reference: str) -> str | None:
        """The image's id, or None when the storage has no such image."""
        try:
            return self.run("image", "inspect", "--format", "{{.Id}}", reference).strip()
        except PodmanError:
            return None

    def inspect_image(self, reference: str) -> dict[str, Any]:
        """``podman image inspect`` of one image."""
        [report] = json.loads(self.run("image", "inspect", reference))
        return dict(report)

    def remove_container(self, name: str) -> None:
        """Kill and remove a container if it exists (test teardown)."""
        subprocess.run(
            self.command("rm", "--force", "--ignore", "--time", "0", name),
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )


def ensure_base_image(podman: Podman) -> str:
    """The test base image (created once with mmdebstrap, ~1 min); returns its reference."""
    if podman.image_id(BASE_IMAGE) is not None:
        return BASE_IMAGE
    with tempfile.TemporaryDirectory(prefix="meterstream-base-") as scratch:
        rootfs = Path(scratch) / "rootfs.tar"
        done = subprocess.run(
            [
                "mmdebstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                *DEBIAN_SOURCES,
            ],
            stdin=subprocess.DEVNULL,  # mmdebstrap reads sources from a non-terminal stdin
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_SECONDS,
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-10:])
            raise PodmanError(f"mmdebstrap could not make the base image:\n{tail}")
        podman.run("import", str(rootfs), BASE_IMAGE, timeout=INSTALL_TIMEOUT_SECONDS)
    return BASE_IMAGE


def pip_settings() -> dict[str, str]:
    """This machine's pip index and CA bundle (``pip config list``: files and PIP_* vars).

    A build on this machine needs them as the host's pip does: a private index or a
    TLS-intercepting proxy makes pypi.org unreachable otherwise.
    """
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    from_files: dict[str, str] = {}
    from_env: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in ("index-url", "cert"):
            found = from_env if key.startswith(":env:") else from_files
            found[name] = value.strip().strip("'\"")
    return {**from_files, **from_env}  # PIP_* variables win over files, as in pip


@dataclass(frozen=True)
class BuiltImage:
    """An image built from the repository, and what building it cost."""

    reference: str
    image_id: str
    size_bytes: int
    build_seconds: float


def image_reference(repo: Path) -> str:
    """One tag per checkout: parallel worktrees never rebuild each other's image."""
    digest = hashlib.sha256(str(repo.resolve()).encode()).hexdigest()[:10]
    return f"localhost/meterstream:test-{digest}"


def build(podman: Podman, repo: Path, base: str) -> BuiltImage:
    """``podman build`` the repository's Dockerfile on ``base``; cached layers are reused."""
    reference = image_reference(repo)
    previous = podman.image_id(reference)
    settings = pip_settings()
    args = [
        "build",
        "--network",
        "host",
        "--pull=never",
        "--layers",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--tag",
        reference,
    ]
    if "index-url" in settings:
        args += ["--build-arg", f"PIP_INDEX_URL={settings['index-url']}"]
    cert = settings.get("cert")
    if cert and Path(cert).is_file():
        args += ["--build-arg", f"PIP_CERT={cert}", "--volume", f"{cert}:{cert}:ro"]
    started = time.monotonic()
    podman.run(*args, str(repo), timeout=BUILD_TIMEOUT_SECONDS)
    seconds = time.monotonic() - started
    report = podman.inspect_image(reference)
    if previous is not None and previous != report["Id"]:
        # The checkout's previous build: untagged now, and nothing refers to it.
        with contextlib.suppress(PodmanError):
            podman.run("rmi", previous)
    return BuiltImage(
        reference=reference,
        image_id=str(report["Id"]),
        size_bytes=int(report["Size"]),
        build_seconds=seconds,
    )
