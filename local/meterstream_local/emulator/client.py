"""Talking to a running emulator (often a subprocess) over its ``/_emulator`` endpoints.

Tests and the demo use ``EmulatorClient`` to read what was accepted and to turn knobs,
and ``EmulatorProcess`` to run ``meterstream emulator`` as a child process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

#: Control calls are local and small; a slow answer means the emulator is stuck.
CONTROL_TIMEOUT_SECONDS = 10.0
#: How long a child emulator gets to print its URL, and to exit after SIGTERM.
PROCESS_START_TIMEOUT_SECONDS = 20.0
PROCESS_STOP_TIMEOUT_SECONDS = 10.0
_URL_LINE = re.compile(r"listening on (http://\S+)")


class EmulatorClient:
    """``/_emulator`` calls against ``base_url``: stats, knobs, reset, session expiry."""

    def __init__(self, base_url: str, *, timeout: float = CONTROL_TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url + "/_emulator", timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> EmulatorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code != 200:
            raise RuntimeError(
                f"emulator {method} /_emulator/{path}: HTTP {response.status_code}: "
                f"{response.text[:300]}"
            )
        return response.json()

    def health(self) -> bool:
        """Whether the emulator answers."""
        try:
            return bool(self._call("GET", "health")["status"] == "ok")
        except (httpx.HTTPError, RuntimeError):
            return False

    def stats(self, *, account: str | None = None) -> dict[str, Any]:
        """The inspection report (requests, events, sessions, meters with totals, knobs) of
        the platform, or of the connected ``account``."""
        params = {"account": account} if account else None
        result: dict[str, Any] = self._call("GET", "stats", params=params)
        return result

    def totals(self, event_name: str, *, account: str | None = None) -> dict[str, dict[str, int]]:
        """customer -> {"sum", "count", "last"} accepted for ``event_name`` (in ``account``)."""
        meter = self.stats(account=account)["meters"].get(event_name)
        return dict(meter["customers"]) if meter else {}

    def freshness(self) -> dict[str, Any]:
        """Accepted wall time minus event timestamp since the last reset: p50/p90/p99/max
        and a cumulative histogram, in seconds."""
        result: dict[str, Any] = self._call("GET", "freshness")
        return result

    def reset_freshness(self) -> None:
        """Start the freshness measurement again (after a warm-up, say)."""
        self._call("POST", "freshness/reset")

    def knobs(self) -> dict[str, Any]:
        """The knobs in force."""
        result: dict[str, Any] = self._call("GET", "knobs")
        return result

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs (``expire_sessions=True`` also expires every session now)."""
        result: dict[str, Any] = self._call("POST", "configure", json=knobs)["knobs"]
        return result

    def expire_sessions(self) -> int:
        """Expire every live session now; returns how many there were."""
        return int(self._call("POST", "expire_sessions")["expired_sessions"])

    def reset(self, *, keep_knobs: bool = False) -> None:
        """Forget everything accepted (and restore the start-up knobs unless ``keep_knobs``)."""
        self._call("POST", "reset", json={"keep_knobs": keep_knobs})

    def seen(self, identifier: str) -> bool:
        """Whether ``identifier`` was accepted within the 24-hour dedupe window."""
        return bool(self._call("GET", "seen", params={"identifier": identifier})["seen"])

    def add_meter(
        self, event_name: str, *, account: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Declare a meter (fields: formula, customer_key, value_key, display_name, status)
        on the platform, or in the connected ``account``."""
        params = {"account": account} if account else None
        result: dict[str, Any] = self._call(
            "POST", "meters", json={"event_name": event_name, **fields}, params=params
        )
        return result

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], Any], *, timeout: float, what: str
    ) -> dict[str, Any]:
        """Poll ``stats()`` until ``predicate(stats)`` is truthy; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.05)


class EmulatorProcess:
    """``meterstream emulator`` as a child process (``args``: extra command-line flags).

    Runs ``python -m meterstream_local.emulator``: the same ``main()`` as the subcommand.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: Path | None = None,
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            "meterstream_local.emulator",
            "--host",
            host,
            "--port",
            str(port),
            *args,
        ]
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> EmulatorProcess:
        """Start it and wait until it prints the URL it listens on."""
        self.proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        found = threading.Event()

        def read() -> None:
            assert self.proc is not None
            assert self.proc.stdout is not None
            log = self.log_path.open("a") if self.log_path else None
            try:
                for line in self.proc.stdout:
                    self._lines.append(line)
                    if log:
                        log.write(line)
                        log.flush()
                    match = _URL_LINE.search(line)
                    if match and not self.base_url:
                        self.base_url = match.group(1)
                        found.set()
            finally:
                if log:
                    log.close()
                found.set()

        self._reader = threading.Thread(target=read, name="emulator-output", daemon=True)
        self._reader.start()
        if not found.wait(PROCESS_START_TIMEOUT_SECONDS) or not self.base_url:
            self.stop()
            raise RuntimeError(f"the emulator did not start; output:\n{self.output()}")
        return self

    def output(self) -> str:
        """Everything the process printed so far."""
        return "".join(self._lines)

    def client(self) -> EmulatorClient:
        """An ``EmulatorClient`` for this process."""
        return EmulatorClient(self.base_url)

    def stop(self) -> int | None:
        """SIGTERM, then wait (SIGKILL after a timeout); returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(PROCESS_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
