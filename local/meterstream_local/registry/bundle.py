"""Apicurio Registry's release bundle, fetched from Maven Central once and cached.

``fetch_bundle()`` runs ``mvn dependency:copy`` for
``io.apicurio:apicurio-registry-app:<version>:tar.gz:all`` and unpacks it into
``$METERSTREAM_CACHE/apicurio-registry-<version>`` (default ``~/.cache/meterstream``), next
to the Kafka jars. As with them, the cache is complete or absent (unpacked into a temporary
sibling, renamed into place), and a file lock makes concurrent first runs fetch once.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from meterstream_local.localkafka.jars import cache_root
from meterstream_local.registry.errors import LocalRegistryError

#: The Apicurio Registry release the tests, demo and benchmark run.
APICURIO_VERSION = "2.6.13.Final"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
#: About 140 MB on a fresh machine.
FETCH_TIMEOUT_SECONDS = 900.0
MVN_TAIL_LINES = 25


def bundle_dir() -> Path:
    """The cached, unpacked bundle directory (it may not exist yet)."""
    return cache_root() / f"apicurio-registry-{APICURIO_VERSION}"


def runner_jar(directory: Path) -> Path | None:
    """The bundle's ``*-runner.jar`` in ``directory``, if it is there."""
    found = sorted(directory.glob("apicurio-registry-app-*-runner.jar"))
    return found[0] if found else None


def cached_bundle() -> Path | None:
    """The runner jar of a complete cached bundle, or None."""
    directory = bundle_dir()
    if not (directory / "lib").is_dir():
        return None
    return runner_jar(directory)


def fetch_bundle() -> Path:
    """The runner jar, fetched with ``mvn`` and unpacked on first use (then cached).

    Raises LocalRegistryError when Maven is missing, fails (its last lines are in the
    message) or times out.
    """
    cached = cached_bundle()
    if cached is not None:
        return cached
    target = bundle_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".fetch-apicurio.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching: wait for it
        cached = cached_bundle()
        if cached is not None:
            return cached
        return _fetch_into(target)


def _fetch_into(target: Path) -> Path:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalRegistryError(
            f"'mvn' (Apache Maven) is not on PATH; it fetches Apicurio Registry "
            f"{APICURIO_VERSION} from Maven Central once. Install it (Debian/Ubuntu: apt-get "
            "install maven), or set SCHEMA_REGISTRY_URL to use a running Schema Registry."
        )
    work = Path(tempfile.mkdtemp(prefix=".fetch-apicurio-", dir=target.parent))
    try:
        download = work / "download"
        command = [
            mvn,
            "--batch-mode",
            "--quiet",
            "-Dstyle.color=never",
            "dependency:copy",
            f"-Dartifact={ARTIFACT}",
            f"-DoutputDirectory={download}",
        ]
        try:
            result = subprocess.run(
                command,
                cwd=work,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=FETCH_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LocalRegistryError(
                f"mvn did not fetch {ARTIFACT} within {FETCH_TIMEOUT_SECONDS:g} s; is Maven "
                "Central (or your mirror in ~/.m2/settings.xml) reachable?"
            ) from None
        archives = sorted(download.glob("*.tar.gz"))
        if result.returncode != 0 or not archives:
            lines = (result.stdout + result.stderr).strip().splitlines()
            tail = "\n".join(lines[-MVN_TAIL_LINES:]) or "(no output)"
            raise LocalRegistryError(
                f"mvn failed to fetch {ARTIFACT} (exit code {result.returncode}); its last "
                f"lines:\n{tail}"
            )
        unpacked = work / "unpacked"
        with tarfile.open(archives[0]) as archive:
            archive.extractall(unpacked, filter="data")
        if runner_jar(unpacked) is None:
            raise LocalRegistryError(f"{archives[0].name} holds no *-runner.jar")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
        jar = runner_jar(target)
        assert jar is not None
        return jar
    finally:
        shutil.rmtree(work, ignore_errors=True)
