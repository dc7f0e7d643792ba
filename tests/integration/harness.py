"""Running the real connector as a process against the real broker, and reading what it did.

Nothing here fakes Kafka or HTTP: records are produced with confluent-kafka, the connector
runs as ``python -m connector run`` (so signals and crashes are real), and results are read
back from the broker (committed offsets, dead letters) and from the emulator.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from confluent_kafka import OFFSET_INVALID, Consumer

if TYPE_CHECKING:
    from meterstream_local.emulator import EmulatorServer

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def write_config(
    directory: Path,
    *,
    bootstrap: str,
    topic: str,
    dead_letter_topic: str,
    group_id: str,
    stripe_url: str,
    **sections: dict[str, Any],
) -> Path:
    """A config file for one test; ``sections`` are merged over the defaults below."""
    config: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": group_id,
            "topics": [topic],
            "dead_letter_topic": dead_letter_topic,
        },
        "stripe": {"api_base": stripe_url, "meter_events_base": stripe_url},
        "batching": {"linger_ms": 20},
        "delivery": {"backoff_initial_seconds": 0.05, "backoff_max_seconds": 1.0},
        "commit": {"interval_ms": 200},
        "shutdown": {"drain_timeout_seconds": 10},
        # The emulator makes a meter on an event name's first use, so a fresh one lists
        # none: tests of the meter checks turn them on and declare their meters.
        "meters": {"preflight": False},
        "metrics": {"enabled": False},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = directory / f"meterstream-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    *,
    partition: int | None = None,
) -> int:
    """Produce and flush; return how many were acknowledged (any refusal fails).
    ``partition`` sends every record there (else the key decides)."""
    from meterstream_local.localkafka import produce_all

    return produce_all(bootstrap, topic, records, timeout=30, partition=partition)


class ConnectorProcess:
    """``meterstream run`` as a child process; its log goes to a file for post-mortems."""

    def __init__(
        self,
        config: Path,
        *,
        log_dir: Path,
        workers: int = 1,
        until_idle: float | None = None,
        api_key: str = "sk_test_meterstream",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.args = [sys.executable, "-m", "connector", "run", "--config", str(config)]
        if workers != 1:
            self.args += ["--workers", str(workers)]
        if until_idle is not None:
            self.args += ["--until-idle", str(until_idle)]
        self.env = {**os.environ, "STRIPE_API_KEY": api_key, **(extra_env or {})}
        self.log_path = log_dir / f"connector-{uuid.uuid4().hex[:8]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ConnectorProcess:
        """Start the process (its log: ``log_path``)."""
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.args, cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal (SIGTERM for a hand-over, SIGKILL for a crash)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for exit; on timeout kill it and fail with the log tail."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"connector did not exit within {timeout:g} s; log tail:\n{self.log_tail()}"
            ) from None
        finally:
            self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the connector's log."""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def ensure_stopped(self) -> None:
        """Kill the process if it still runs (test teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self._log.close()


@dataclass(kw_only=True)
class ConnectorWorld:
    """One test's slice of the local world: its topics, group, emulator and connectors.

    The base of the integration and reliability worlds: it writes configs for them and
    starts connectors against them (stopped by the fixture that made the world).
    """

    bootstrap: str
    topic: str
    dead_letter_topic: str
    group_id: str
    partitions: int
    emulator: EmulatorServer
    tmp_path: Path
    processes: list[ConnectorProcess] = field(default_factory=list)

    def config(self, **sections: dict[str, Any]) -> Path:
        return write_config(
            self.tmp_path,
            bootstrap=self.bootstrap,
            topic=self.topic,
            dead_letter_topic=self.dead_letter_topic,
            group_id=self.group_id,
            stripe_url=self.emulator.base_url,
            **sections,
        )

    def connector(self, config: Path, **kwargs: Any) -> ConnectorProcess:
        process = ConnectorProcess(config, log_dir=self.tmp_path, **kwargs)
        self.processes.append(process)
        return process.start()


def committed(bootstrap: str, group_id: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (partition -> offset, -1001 when none)."""
    from meterstream_local.localkafka import committed_offsets

    found = committed_offsets(bootstrap, group_id, topic)
    return {p: found.get(p, OFFSET_INVALID) for p in range(partitions)}


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """High watermarks of every partition (``partitions`` of them, checked)."""
    from meterstream_local.localkafka import end_offsets as read_end_offsets

    ends = read_end_offsets(bootstrap, topic)
    assert sorted(ends) == list(range(partitions)), ends
    return ends


def read_topic(bootstrap: str, topic: str, *, expect: int, timeout: float = 30) -> list[Any]:
    """Read ``expect`` messages from the start of ``topic`` (fails on fewer within timeout)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expect and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None:
                    messages.append(msg)
        # Linger briefly to catch more than expected (an over-count is a failure too).
        for msg in consumer.consume(500, 1.0):
            if msg.error() is None:
                messages.append(msg)
    finally:
        consumer.close()
    assert len(messages) >= expect, f"read {len(messages)} of {expect} from {topic}"
    return messages


def headers_of(message: Any) -> dict[str, str]:
    """A message's headers as str -> str (the last value wins)."""
    return {key: (value or b"").decode() for key, value in (message.headers() or [])}


def run_meterstream(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m connector ARGS`` to completion, in a clean environment plus ``env``.

    METERSTREAM_* and STRIPE_API_KEY of the test runner are dropped, so a developer's
    shell never changes what a test sees.
    """
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("METERSTREAM_") and key != "STRIPE_API_KEY"
    }
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "connector", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def scrape(port: int) -> dict[str, float]:
    """A connector's ``/metrics`` as {"name{labels}": value} for meterstream_ series."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("meterstream_"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    return series


def scrape_when_up(port: int) -> dict[str, float]:
    """``scrape(port)``, or nothing while the connector's metrics server is not listening."""
    import httpx

    try:
        return scrape(port)
    except httpx.TransportError:
        return {}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a connector's metrics server)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
