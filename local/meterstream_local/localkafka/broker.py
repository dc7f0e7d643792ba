"""LocalKafka: a single-node Apache Kafka broker (KRaft) on loopback, run from the cached jars.

It starts the broker with the installed JDK, waits until it really serves metadata, and
makes sure it never outlives us: ``stop()`` on exit of the ``with`` block and at interpreter
exit, and on Linux the kernel kills the broker if our process dies first
(``PR_SET_PDEATHSIG``). Its working directory holds everything of one broker:

    server.properties   rendered from settings.BROKER_SETTINGS on every start
    log4j2.xml          logging to stdout, which goes to broker.log
    broker.log          the broker's log and anything the JVM prints (read this first)
    kraft/              the data (log.dirs), formatted on first start, kept by restart()
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from types import TracebackType

from connector.errors import LocalKafkaError
from meterstream_local.localkafka.admin import wait_until_serving
from meterstream_local.localkafka.jars import KAFKA_VERSION, fetch_jars
from meterstream_local.localkafka.settings import (
    BROKER_SETTINGS,
    kraft_settings,
    new_cluster_id,
    render_properties,
)

#: Loopback only: the local broker is for this machine.
HOST = "127.0.0.1"
#: Heap of the broker: ample for tests and benchmarks with small records, kind to a
#: machine that runs the tests next to it.
DEFAULT_HEAP = "512m"
#: JVM flags, after the heap. Serial GC: one collector thread instead of G1's workers on
#: 2 shared cores. No hsperfdata files in /tmp. Die on OOM instead of limping.
JVM_OPTIONS: tuple[str, ...] = (
    "-XX:+UseSerialGC",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
#: The storage formatter is a short-lived JVM: small heap, no optimising JIT.
FORMAT_JVM_OPTIONS: tuple[str, ...] = ("-Xmx128m", "-XX:TieredStopAtLevel=1", *JVM_OPTIONS)
#: A cold broker serves metadata in 2-12 s here; a loaded 2-core machine needs headroom.
START_TIMEOUT_SECONDS = 90.0
#: A clean single-node shutdown takes ~2 s; after this we SIGKILL it.
STOP_TIMEOUT_SECONDS = 20.0
#: Formatting the storage is one short JVM run (~1.5 s).
FORMAT_TIMEOUT_SECONDS = 120.0
#: Lines of the broker's log shown when it fails to start.
LOG_TAIL_LINES = 30
#: Linux prctl option: deliver a signal to this process when its parent thread dies.
_PR_SET_PDEATHSIG = 1

#: Brokers this process started and has not stopped yet, for the interpreter-exit hook.
_live: set[LocalKafka] = set()


class LocalKafka:
    """A single-node Kafka broker (broker + KRaft controller) on 127.0.0.1.

    ``port``/``controller_port`` default to free ports chosen by the OS, ``data_dir`` to a
    temporary directory removed by ``close()`` (a given one is kept, and reused if already
    formatted). ``settings`` override ``BROKER_SETTINGS``. ``start()`` fetches the jars on
    first use. Use it as a context manager, or call ``start()``/``close()``; ``stop()`` +
    ``start()`` (or ``restart()``) keep the ports and the data, so clients reconnect to the
    same ``bootstrap_servers``.

    Start it from a long-lived thread (normally the main one): Linux delivers the
    parent-death signal when the *thread* that started the broker exits.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        controller_port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        settings: Mapping[str, str] | None = None,
        heap: str = DEFAULT_HEAP,
        start_timeout: float = START_TIMEOUT_SECONDS,
    ) -> None:
        chosen = free_ports(2) if port is None or controller_port is None else [0, 0]
        self.port = port if port is not None else chosen[0]
        self.controller_port = controller_port if controller_port is not None else chosen[1]
        if self.port == self.controller_port:
            raise LocalKafkaError(f"the broker and controller ports must differ ({self.port})")
        self._owns_workdir = data_dir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="meterstream-kafka-"))
            if data_dir is None
            else Path(data_dir).resolve()
        )
        self.settings = dict(settings or {})
        self.heap = heap
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._keep_workdir = False

    # ------------------------------------------------------------------ properties

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>``: what clients use, the same across restarts."""
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The broker's log file (log4j2 lines and the JVM's own output)."""
        return self.workdir / "broker.log"

    @property
    def data_path(self) -> Path:
        """The broker's data (``log.dirs``)."""
        return self.workdir / "kraft"

    @property
    def pid(self) -> int | None:
        """The broker JVM's process id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def is_running(self) -> bool:
        """Whether the broker process is alive (not whether it serves yet)."""
        return self._process is not None and self._process.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalKafka:
        """Start the broker and return once it serves metadata (no-op when running).

        Raises LocalKafkaError naming the problem: no java, a port taken, the jars could not
        be fetched, the broker exited early (with its log tail) or did not serve in time.
        """
        if self.is_running:
            return self
        java = find_java()
        for what, port in (("broker", self.port), ("controller", self.controller_port)):
            ensure_port_free(port, what)
        jars = fetch_jars()
        self.workdir.mkdir(parents=True, exist_ok=True)
        properties = self._write_config()
        if not (self.data_path / "meta.properties").is_file():
            self._format(java, jars, properties)
        command = [
            java,
            f"-Xmx{self.heap}",
            *JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.xml'}",
            "-cp",
            str(jars / "*"),
            "kafka.Kafka",
            str(properties),
        ]
        with self.log_path.open("ab") as log:
            log.write(f"\n===== meterstream: starting Kafka {KAFKA_VERSION} =====\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, and we stop the broker in order
                # Safe with threads: the child makes two prepared C calls, then execs.
                preexec_fn=_die_with_parent(),  # noqa: PLW1509
            )
        _live.add(self)
        try:
            wait_until_serving(
                self.bootstrap_servers, timeout=self.start_timeout, check=self._check_alive
            )
        except TimeoutError:
            self._abort()
            raise LocalKafkaError(
                f"the Kafka broker did not serve {self.bootstrap_servers} within "
                f"{self.start_timeout:g} s; {self._log_excerpt()}"
            ) from None
        except BaseException:
            self._abort()
            raise
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Shut the broker down cleanly (SIGTERM), SIGKILL it after ``timeout``; keep data."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        _live.discard(self)

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL), like a crash; the data stays for ``start()``."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._process = None
        _live.discard(self)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds for the broker to exit; its exit code, or None."""
        process = self._process
        if process is None:
            return None
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def restart(self) -> LocalKafka:
        """Stop cleanly and start again on the same ports with the same data."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the broker and remove its temporary directory (a given data_dir is kept)."""
        self.stop()
        if self._owns_workdir and not self._keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalKafka:
        try:
            return self.start()
        except BaseException:
            self.close()  # __exit__ will not run; keeps the files of a failed start
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` of the broker's log ("" before the first start)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"LocalKafka({self.bootstrap_servers}, {state}, workdir={self.workdir})"

    # ------------------------------------------------------------------ internals

    def _write_config(self) -> Path:
        settings = {
            **kraft_settings(
                listen_host=HOST,
                port=self.port,
                advertised=self.bootstrap_servers,
                controller_port=self.controller_port,
            ),
            "log.dirs": str(self.data_path),
            **BROKER_SETTINGS,
            **self.settings,
        }
        properties = self.workdir / "server.properties"
        properties.write_text(render_properties(settings), encoding="utf-8")
        log4j = resources.files(__package__).joinpath("log4j2.xml").read_text(encoding="utf-8")
        (self.workdir / "log4j2.xml").write_text(log4j, encoding="utf-8")
        return properties

    def _format(self, java: str, jars: Path, properties: Path) -> None:
        """Format the KRaft storage: a new cluster id, this node as its only voter."""
        command = [
            java,
            *FORMAT_JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.xml'}",
            "-cp",
            str(jars / "*"),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            new_cluster_id(),
            "--config",
            str(properties),
        ]
        with self.log_path.open("ab") as log:
            log.write(b"\n===== meterstream: formatting the storage =====\n")
            log.flush()
            try:
                result = subprocess.run(
                    command,
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=FORMAT_TIMEOUT_SECONDS,
                    preexec_fn=_die_with_parent(),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                result = None
        if result is None or result.returncode != 0:
            self._keep_workdir = True
            outcome = "timed out" if result is None else f"exited with {result.returncode}"
            raise LocalKafkaError(
                f"formatting the Kafka storage in {self.data_path} {outcome}; {self._log_excerpt()}"
            )

    def _check_alive(self) -> None:
        """Raise (with the log's tail) if the broker process has already exited."""
        process = self._process
        if process is None or process.poll() is None:
            return
        hint = ""
        tail = self.log_tail()
        if "Address already in use" in tail:
            hint = (
                f" Port {self.port} or {self.controller_port} on {HOST} was taken by another "
                "process while the broker started."
            )
        elif "UnsupportedClassVersionError" in tail:
            hint = f" Kafka {KAFKA_VERSION} needs Java 17 or newer."
        raise LocalKafkaError(
            f"the Kafka broker exited early (exit code {process.returncode}).{hint} "
            f"{self._log_excerpt()}"
        )

    def _abort(self) -> None:
        """Kill a broker that failed to start; keep its files for the post-mortem."""
        self._keep_workdir = True
        self.kill()

    def _log_excerpt(self) -> str:
        return f"its log is {self.log_path}, ending:\n{self.log_tail()}"


def find_java() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on PATH, or a LocalKafkaError saying how to install."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError(
            f"'java' is not on PATH (nor in $JAVA_HOME/bin); the local Kafka {KAFKA_VERSION} "
            "broker needs a JDK or JRE 17 or newer. Install one (Debian/Ubuntu: apt-get "
            "install openjdk-17-jre-headless; macOS: brew install openjdk@17), or set "
            "KAFKA_BOOTSTRAP_SERVERS to use a running Kafka cluster instead."
        )
    return java


def ensure_port_free(port: int, what: str = "broker") -> None:
    """Raise LocalKafkaError naming ``port`` if something on this machine already listens on it.

    Binds with SO_REUSEADDR like the JVM does, so a port lingering in TIME_WAIT after a
    restart counts as free, and only a real listener counts as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise LocalKafkaError(f"cannot use port {port} on {HOST}: {exc}") from exc
            raise LocalKafkaError(
                f"port {port} on {HOST} (the Kafka {what} port) is already in use by another "
                "process; choose another port, or stop what is listening there."
            ) from None


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free now, chosen by the OS (bound together, released)."""
    with contextlib.ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when we die (None elsewhere).

    prctl is resolved here, before fork, so the child only makes one C call.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # we died between fork and prctl: follow at once
            os.kill(os.getpid(), signal.SIGKILL)

    return set_parent_death_signal


@atexit.register
def _stop_all() -> None:
    """Interpreter exit: no broker started by this process may outlive it."""
    for kafka in list(_live):
        kafka.close()
