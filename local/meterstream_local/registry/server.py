"""LocalRegistry: Apicurio Registry on loopback, run from the cached bundle with the local JDK.

In-memory storage (a restart forgets every schema), a free port chosen by the OS, ready
once ``/health/ready`` says so (about 12 s cold; more on a busy machine). Like the local
broker it never outlives us: ``close()`` at the end of the ``with`` block and at
interpreter exit, and on Linux the kernel kills it if our process dies first.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from meterstream_local.localkafka.broker import (
    HOST,
    _die_with_parent,
    ensure_port_free,
    find_java,
    free_ports,
)
from meterstream_local.registry.bundle import APICURIO_VERSION, fetch_bundle
from meterstream_local.registry.errors import LocalRegistryError

__all__ = ["CCOMPAT_PATH", "LocalRegistry", "LocalRegistryError", "registry"]

#: Where Apicurio serves the Confluent-compatible API (what schema_registry.url names).
CCOMPAT_PATH = "/apis/ccompat/v7"
#: Cold start is ~12 s on an idle machine; a loaded 2-core one needs room.
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0
#: Small heap, one GC thread, no JIT beyond C1: kind to a machine running tests beside it.
JVM_OPTIONS: tuple[str, ...] = (
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
)
LOG_TAIL_LINES = 30

_live: set[LocalRegistry] = set()


class LocalRegistry:
    """Apicurio Registry on 127.0.0.1:``port`` (a free one by default).

    ``stop()`` + ``start()`` keep the port (but not the schemas: storage is in memory), so a
    test can take the registry away and bring it back at the same URL.
    """

    def __init__(
        self, port: int | None = None, *, start_timeout: float = START_TIMEOUT_SECONDS
    ) -> None:
        self.port = port if port is not None else free_ports(1)[0]
        self.start_timeout = start_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="meterstream-registry-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API: what ``schema_registry.url`` takes."""
        return self.base_url + CCOMPAT_PATH

    @property
    def log_path(self) -> Path:
        """The registry's output (Quarkus log lines)."""
        return self.workdir / "registry.log"

    @property
    def is_running(self) -> bool:
        """Whether the process is alive (not whether it is ready)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> LocalRegistry:
        """Start and return once ready; LocalRegistryError naming the problem otherwise."""
        if self.is_running:
            return self
        try:
            java = find_java()
            ensure_port_free(self.port, "Schema Registry")
        except Exception as exc:  # LocalKafkaError: its message says what to do
            raise LocalRegistryError(str(exc)) from None
        jar = fetch_bundle()
        command = [
            java,
            *JVM_OPTIONS,
            f"-Dquarkus.http.host={HOST}",
            f"-Dquarkus.http.port={self.port}",
            "-jar",
            str(jar),
        ]
        with self.log_path.open("ab") as log:
            log.write(f"\n===== meterstream: starting Apicurio {APICURIO_VERSION} =====\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                cwd=jar.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509
            )
        _live.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise LocalRegistryError(
                    f"Apicurio Registry exited early (exit code {code}); its log is "
                    f"{self.log_path}, ending:\n{self.log_tail()}"
                )
            if ready(self.base_url):
                return
            time.sleep(0.25)
        raise LocalRegistryError(
            f"Apicurio Registry was not ready on {self.base_url} within "
            f"{self.start_timeout:g} s; its log is {self.log_path}, ending:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop it (SIGTERM, then SIGKILL after ``timeout``); the port stays ours to reuse."""
        process, self._process = self._process, None
        _live.discard(self)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop it and remove its working directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of its log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def __enter__(self) -> LocalRegistry:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def ready(base_url: str, timeout: float = 2.0) -> bool:
    """Whether the registry at ``base_url`` (without the API path) says it is ready."""
    try:
        with urllib.request.urlopen(f"{base_url}/health/ready", timeout=timeout) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def registry() -> Iterator[str]:
    """The Confluent-compatible URL of a Schema Registry for the duration of the block:
    ``SCHEMA_REGISTRY_URL`` if set (used as it is, never stopped), else a LocalRegistry."""
    existing = os.environ.get("SCHEMA_REGISTRY_URL")
    if existing:
        yield existing.rstrip("/")
        return
    with LocalRegistry() as local:
        yield local.url


@atexit.register
def _stop_all() -> None:
    """Interpreter exit: no registry started by this process may outlive it."""
    for local in list(_live):
        local.close()
