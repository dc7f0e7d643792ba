"""The Apache Kafka broker's jars, fetched from Maven Central once and cached.

``fetch_jars()`` runs the installed Maven on ``pom.xml`` (package data) into
``$METERSTREAM_CACHE/kafka-<version>/libs`` (default ``~/.cache/meterstream``). The cache is
complete or absent: Maven writes into a temporary sibling that is renamed into place only
after it succeeded, so an interrupted fetch never leaves half a classpath behind. A file
lock makes concurrent first runs (two test sessions on a fresh machine) fetch only once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from connector.errors import LocalKafkaError

#: The Apache Kafka release the local broker runs; equal to kafka.version in pom.xml.
KAFKA_VERSION = "4.1.1"
#: A slow link downloads ~45 MB of jars plus Maven's own plugins on a fresh machine.
FETCH_TIMEOUT_SECONDS = 900.0
#: Lines of Maven's output shown when it fails: enough for the error and its cause.
MVN_TAIL_LINES = 25
#: Written last into a complete cache; holds the digest of the pom it was fetched with,
#: so editing pom.xml (a new Kafka version, another jar) fetches again.
_STAMP = ".pom-sha256"
#: The jar that must be present for the classpath to run a broker at all.
_BROKER_JAR = f"kafka_2.13-{KAFKA_VERSION}.jar"


def cache_root() -> Path:
    """Where meterstream caches downloads: ``$METERSTREAM_CACHE`` or ``~/.cache/meterstream``."""
    configured = os.environ.get("METERSTREAM_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "meterstream"


def jars_dir() -> Path:
    """The cached classpath directory (it may not exist yet)."""
    return cache_root() / f"kafka-{KAFKA_VERSION}" / "libs"


def pom_text() -> str:
    """The pom.xml shipped with this package."""
    return resources.files(__package__).joinpath("pom.xml").read_text(encoding="utf-8")


def cached_jars() -> Path | None:
    """The cached classpath if it is complete and was fetched with the current pom."""
    libs = jars_dir()
    stamp = libs / _STAMP
    if stamp.is_file() and stamp.read_text().strip() == _pom_digest():
        return libs
    return None


def fetch_jars() -> Path:
    """The broker's classpath directory, fetched with ``mvn`` on first use (then cached).

    Raises LocalKafkaError when Maven is missing, fails (its last lines are in the message)
    or times out.
    """
    cached = cached_jars()
    if cached is not None:
        return cached
    libs = jars_dir()
    libs.parent.mkdir(parents=True, exist_ok=True)
    with (libs.parent / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching: wait for it
        cached = cached_jars()
        if cached is not None:
            return cached
        return _fetch_into(libs)


def find_mvn() -> str:
    """The ``mvn`` executable, or a LocalKafkaError that says how to install it."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError(
            f"'mvn' (Apache Maven) is not on PATH; it fetches the Kafka {KAFKA_VERSION} jars "
            "from Maven Central once. Install it (Debian/Ubuntu: apt-get install maven; "
            "macOS: brew install maven), or set KAFKA_BOOTSTRAP_SERVERS to use a running "
            "Kafka cluster instead."
        )
    return mvn


def _fetch_into(libs: Path) -> Path:
    """Run Maven into a temporary directory next to ``libs``, then rename it into place."""
    mvn = find_mvn()
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=libs.parent))
    try:
        (work / "pom.xml").write_text(pom_text(), encoding="utf-8")
        output = work / "libs"
        command = [
            mvn,
            "--batch-mode",
            "--quiet",
            "-Dstyle.color=never",
            "--file",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={output}",
            "-DincludeScope=runtime",
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
            raise LocalKafkaError(
                f"mvn did not finish fetching the Kafka {KAFKA_VERSION} jars within "
                f"{FETCH_TIMEOUT_SECONDS:g} s; is Maven Central (or your mirror in "
                "~/.m2/settings.xml) reachable?"
            ) from None
        if result.returncode != 0 or not (output / _BROKER_JAR).is_file():
            lines = (result.stdout + result.stderr).strip().splitlines()
            tail = "\n".join(lines[-MVN_TAIL_LINES:]) or "(no output)"
            raise LocalKafkaError(
                f"mvn failed to fetch the Kafka {KAFKA_VERSION} jars (exit code "
                f"{result.returncode}); its last lines:\n{tail}"
            )
        (output / _STAMP).write_text(_pom_digest() + "\n")
        if libs.exists():  # fetched with an older pom: move it out of the way first
            libs.rename(work / "stale")
        output.rename(libs)
        return libs
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pom_digest() -> str:
    return hashlib.sha256(pom_text().encode()).hexdigest()
