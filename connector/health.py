"""Liveness and readiness, and the small HTTP server that serves them with ``/metrics``.

The worker loop calls ``HealthState.beat()`` every turn and ``set_problem(check, reason)``
for each thing that can make it not ready (Stripe unreachable or refusing the key, the
dead-letter topic unwritable, Kafka down). ``/livez`` fails only when the loop stopped
beating (a hang that a restart cures); ``/readyz`` fails while any problem stands, with a
JSON body that says which and why, so ``kubectl describe pod`` tells the operator what to
fix. With ``--workers N`` each worker writes its report to a status file and the
supervisor's server reads them all.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from connector.config import MetricsConfig

#: How often (at most) a worker rewrites its status file; the loop beats far more often.
STATUS_WRITE_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class HealthReport:
    """What /livez and /readyz answer: two verdicts and the JSON body that explains them."""

    live: bool
    ready: bool
    body: dict[str, Any]


class HealthState:
    """The worker's heartbeat and its open problems (thread-safe: the server reads it)."""

    def __init__(
        self,
        *,
        max_heartbeat_age: float,
        status_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_age = max_heartbeat_age
        self._status_file = status_file
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat: float | None = None
        self._started = clock()
        self._problems: dict[str, str] = {}
        self._last_written = float("-inf")

    def beat(self) -> None:
        """The loop is alive (called every turn of the worker loop)."""
        now = self._clock()
        with self._lock:
            self._last_beat = now
        if self._status_file is not None and now - self._last_written >= (
            STATUS_WRITE_INTERVAL_SECONDS
        ):
            self._last_written = now
            self._write_status()

    def set_problem(self, check: str, reason: str | None) -> None:
        """Record (reason) or clear (None) the problem of one check."""
        with self._lock:
            if reason is None:
                self._problems.pop(check, None)
            else:
                self._problems[check] = reason

    def report(self) -> HealthReport:
        """The current verdicts. Before the first beat, start-up time counts as the age."""
        now = self._clock()
        with self._lock:
            since = self._last_beat if self._last_beat is not None else self._started
            problems = dict(self._problems)
        age = now - since
        live = age <= self._max_age
        if not live:
            problems.setdefault("loop", f"no heartbeat for {age:.1f} s (bound {self._max_age} s)")
        ready = live and not problems
        body: dict[str, Any] = {
            "status": "ok" if ready else "not ready",
            "heartbeat_age_seconds": round(age, 3),
            "problems": problems,
        }
        return HealthReport(live=live, ready=ready, body=body)

    def _write_status(self) -> None:
        """Write the report atomically with a wall-clock stamp the supervisor can age."""
        assert self._status_file is not None
        with self._lock:
            problems = dict(self._problems)
        payload = {"pid": os.getpid(), "written_at": time.time(), "problems": problems}
        temporary = self._status_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(payload), encoding="utf-8")
        temporary.replace(self._status_file)


def read_status_files(directory: Path, max_age: float) -> HealthReport:
    """Combine the workers' status files: live if all beat recently, ready if no problems."""
    now = time.time()
    workers: dict[str, Any] = {}
    live = True
    ready = True
    files = sorted(directory.glob("*.json"))
    if not files:
        return HealthReport(
            live=True,
            ready=False,
            body={"status": "not ready", "problems": {"workers": "starting"}},
        )
    for path in files:
        try:
            status = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # mid-replace on some filesystems; the next probe reads it
        age = now - float(status.get("written_at", 0.0))
        problems = dict(status.get("problems", {}))
        if age > max_age:
            live = False
            problems["loop"] = f"no heartbeat for {age:.1f} s (bound {max_age} s)"
        if problems:
            ready = False
        workers[path.stem] = {"heartbeat_age_seconds": round(age, 3), "problems": problems}
    ready = ready and live
    body = {"status": "ok" if ready else "not ready", "workers": workers}
    return HealthReport(live=live, ready=ready, body=body)


class HealthServer:
    """Serves /metrics, /livez and /readyz on ``metrics.host:metrics.port`` in a thread."""

    def __init__(
        self,
        config: MetricsConfig,
        report: Callable[[], HealthReport],
        *,
        multiprocess: bool = False,
    ) -> None:
        self._config = config
        self._report = report
        self._multiprocess = multiprocess
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    def start(self) -> None:
        handler = _handler(self._report, self._exposition())
        try:
            self._server = ThreadingHTTPServer((self._config.host, self._config.port), handler)
        except OSError as exc:
            from connector.errors import ConfigError

            raise ConfigError(
                [
                    (
                        "metrics.port",
                        f"cannot listen on {self._config.host}:{self._config.port} ({exc}); "
                        "choose a free port or set metrics.enabled: false",
                    )
                ]
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="meterstream-health", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _exposition(self) -> Callable[[], tuple[bytes, str]]:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry
        from prometheus_client.exposition import generate_latest

        # Importing the module registers every meterstream_ metric, even before the
        # worker has counted anything: a scrape never sees a partial set of series.
        from connector.metrics import BUILD_INFO

        registry = REGISTRY
        if self._multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(BUILD_INFO)

        def render() -> tuple[bytes, str]:
            return generate_latest(registry), CONTENT_TYPE_LATEST

        return render


def _handler(
    report: Callable[[], HealthReport], exposition: Callable[[], tuple[bytes, str]]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, content_type = exposition()
                self._send(200, body, content_type)
            elif path in ("/livez", "/readyz"):
                verdict = report()
                ok = verdict.live if path == "/livez" else verdict.ready
                self._send(
                    200 if ok else 503,
                    json.dumps(verdict.body).encode(),
                    "application/json",
                )
            else:
                self._send(
                    404,
                    b'{"error": "not found: try /metrics, /livez, /readyz"}',
                    "application/json",
                )

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Probes every few seconds are not news; keep them out of the logs."""

    return Handler
