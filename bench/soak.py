"""The soak run: minutes of continuous usage with faults injected throughout (issue 6).

A broker of its own (restarted mid-run), the emulator in this process, a producer thread
writing realistic usage (with a sprinkling of bad records) at a steady rate, and two
connector processes in one group:

- ``steady`` is never killed: its RSS is sampled all run long (memory must stay flat).
- ``victim`` is SIGKILLed and restarted by some faults (its partitions move to ``steady``
  and back: rebalances under load).

Every ``--fault-every`` seconds one fault, in turn: SIGKILL of the victim, Stripe down
(503s), Stripe unreachable (connection refused), a 429 storm with Retry-After, sessions
expiring every few requests, a latency spike past the request timeout, the dead-letter
topic unwritable, the broker stopped and restarted. After each one: how long until billing
resumed, how long until the backlog it caused was billed, and the billing rate before and
after. At the end production stops, the connectors catch up and hand over (SIGTERM), and
the totals are checked exactly: every good record billed once, every bad one
dead-lettered, the group committed to the end.

    .venv/bin/python -m bench.soak [--minutes 10] [--rate 1000] [--fault-every 40]

Writes bench/results/soak.json (``make soak``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import yaml

from meterstream_local import samples
from meterstream_local.emulator import EmulatorServer
from meterstream_local.localkafka import LocalKafka, create_topics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "soak.json"
#: Source partitions: enough for two processes to split and rebalance.
PARTITIONS = 8
#: One bad record in this many (every local dead-letter reason, in turn).
BAD_EVERY = 200
#: Seconds after start before the steady process's first RSS sample (imports, warm-up).
WARM_UP_SECONDS = 30.0
#: How often RSS and the billing count are sampled.
RSS_EVERY_SECONDS = 5.0
PROGRESS_EVERY_SECONDS = 0.1
#: How long most faults last.
FAULT_SECONDS = 10.0
#: Window for "billing rate before/after a fault".
RATE_WINDOW_SECONDS = 10.0
#: Bound for the final catch-up once production stops.
FINAL_CATCH_UP_SECONDS = 300.0
#: The connector's request timeout here, and the latency of a spike (past it).
REQUEST_TIMEOUT_SECONDS = 2.0
SPIKE_LATENCY_MS = 3000.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------- the ledger


@dataclass
class Ledger:
    """What the producer got into Kafka (from delivery reports), and so what must be billed."""

    good: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    totals: Counter[tuple[str, str]] = field(default_factory=Counter)
    bad: set[tuple[int, int]] = field(default_factory=set)
    produced: int = 0
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def good_count(self) -> int:
        with self.lock:
            return len(self.good)


class UsageProducer(threading.Thread):
    """Produces realistic usage at ``rate`` records/s until stopped; fills the ledger."""

    def __init__(self, bootstrap: str, topic: str, rate: float, ledger: Ledger, run: str) -> None:
        super().__init__(name="usage-producer", daemon=True)
        from confluent_kafka import Producer

        self.topic = topic
        self.rate = rate
        self.ledger = ledger
        self.run_id = run
        self.stopping = threading.Event()
        # Idempotent, and patient: records written while the broker restarts wait in the
        # queue instead of failing (a failed-but-written record would confuse the ledger).
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "message.timeout.ms": 600_000,
                "queue.buffering.max.messages": 1_000_000,
                "logger": _quiet_logger(),
            }
        )

    def _records(self) -> Iterator[tuple[bytes, bytes, bool]]:
        chunk = 0
        while True:
            before = Counter[str]()
            for key, value, expected in samples.generate(
                10_000, bad_every=BAD_EVERY, seed=chunk, id_prefix=f"{self.run_id}-{chunk}"
            ):
                bad = expected.bad != before
                before = Counter(expected.bad)
                yield key, value, bad
            chunk += 1

    def run(self) -> None:
        records = self._records()
        started = time.monotonic()
        sent = 0
        while not self.stopping.is_set():
            due = int((time.monotonic() - started) * self.rate) - sent
            for _ in range(max(0, due)):
                key, value, bad = next(records)
                self._produce(key, value, bad)
                sent += 1
            self.producer.poll(0.02)
        self.producer.flush(600)

    def _produce(self, key: bytes, value: bytes, bad: bool) -> None:
        def report(err: Any, msg: Any) -> None:
            ledger = self.ledger
            with ledger.lock:
                if err is not None:
                    ledger.failed += 1
                    return
                ledger.produced += 1
                if bad:
                    ledger.bad.add((msg.partition(), msg.offset()))
                else:
                    body = orjson.loads(value)
                    ledger.good[body["id"]] = (body["event_name"], body["customer"], body["value"])
                    ledger.totals[(body["event_name"], body["customer"])] += body["value"]

        while True:
            try:
                self.producer.produce(self.topic, key=key, value=value, on_delivery=report)
                return
            except BufferError:
                self.producer.poll(0.1)


def _quiet_logger() -> Any:
    import logging

    logger = logging.getLogger("soak.kafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


# --------------------------------------------------------------------------- processes


class Connector:
    """One ``meterstream run`` process; restartable; its logs appended to one file."""

    def __init__(self, name: str, config: Path, log_dir: Path) -> None:
        self.name = name
        self.config = config
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "STRIPE_API_KEY": "sk_test_soak"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "connector", "run", "--config", str(self.config)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# --------------------------------------------------------------------------- sampling


class Sampler(threading.Thread):
    """Billing progress (emulator accepted count) and the steady process's RSS over time."""

    def __init__(self, emulator: EmulatorServer, steady: Connector) -> None:
        super().__init__(name="sampler", daemon=True)
        self.emulator = emulator
        self.steady = steady
        self.progress: list[tuple[float, int]] = []
        self.rss: list[tuple[float, int]] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def run(self) -> None:
        next_rss = self.started + WARM_UP_SECONDS
        while not self.stopping.wait(PROGRESS_EVERY_SECONDS):
            now = time.monotonic()
            with self.lock:
                self.progress.append((now, self.emulator.state.events_accepted))
            if now >= next_rss and self.steady.alive():
                next_rss = now + RSS_EVERY_SECONDS
                try:
                    rss = psutil.Process(self.steady.pid).memory_info().rss
                except psutil.Error:
                    continue
                self.rss.append((now - self.started, rss))

    def billed_at(self, moment: float) -> int:
        with self.lock:
            before = [count for when, count in self.progress if when <= moment]
        return before[-1] if before else 0

    def rate(self, start: float, end: float) -> float:
        """Events billed per second over [start, end]."""
        if end <= start:
            return 0.0
        return (self.billed_at(end) - self.billed_at(start)) / (end - start)

    @staticmethod
    def wait_for(predicate: Callable[[], bool], since: float, timeout: float) -> float | None:
        """Seconds from ``since`` until ``predicate`` held (polled), or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return round(time.monotonic() - since, 2)
            time.sleep(PROGRESS_EVERY_SECONDS)
        return None


# --------------------------------------------------------------------------- faults


@dataclass
class FaultRecord:
    kind: str
    at_seconds: float
    duration_seconds: float
    #: Fault ended -> the first event billed after it.
    recovery_seconds: float | None = None
    #: Fault ended -> every good record produced before it ended is billed.
    catch_up_seconds: float | None = None
    rate_before: float = 0.0
    rate_after: float = 0.0
    notes: str = ""


class Soak:
    """The whole run: world, processes, fault schedule, verdict."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.run_id = f"soak{uuid.uuid4().hex[:6]}"
        self.kafka = LocalKafka(data_dir=workdir / "kafka")
        self.emulator = EmulatorServer(latency_ms=20, jitter_ms=20, seed=args.seed)
        self.topic = "usage"
        self.dlq = "usage.dlq"
        self.ledger = Ledger()
        self.faults: list[FaultRecord] = []
        self.metrics_port = _free_port()

    # -- setup ----------------------------------------------------------------------------

    def _config(self, name: str, metrics_port: int | None) -> Path:
        config = {
            "kafka": {
                "bootstrap_servers": self.kafka.bootstrap_servers,
                "group_id": f"{self.run_id}-group",
                "topics": [self.topic],
                "dead_letter_topic": self.dlq,
                # A killed member's partitions move on after 6 s, not 45.
                "consumer": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
            },
            "stripe": {
                "api_base": self.emulator.base_url,
                "meter_events_base": self.emulator.base_url,
                "request_timeout_seconds": REQUEST_TIMEOUT_SECONDS,
            },
            "delivery": {"backoff_max_seconds": 5.0, "not_ready_after_seconds": 5.0},
            "shutdown": {"drain_timeout_seconds": 10},
            # The soak's emulator makes meters on first use (its faults are the point).
            "meters": {"preflight": False},
            "metrics": (
                {"enabled": True, "host": "127.0.0.1", "port": metrics_port}
                if metrics_port
                else {"enabled": False}
            ),
        }
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self) -> None:
        self.kafka.start()
        create_topics(self.kafka.bootstrap_servers, {self.topic: PARTITIONS, self.dlq: 1})
        self.emulator.start()
        self.steady = Connector("steady", self._config("steady", self.metrics_port), self.workdir)
        self.victim = Connector("victim", self._config("victim", None), self.workdir)
        self.producer = UsageProducer(
            self.kafka.bootstrap_servers, self.topic, self.args.rate, self.ledger, self.run_id
        )
        self.sampler = Sampler(self.emulator, self.steady)
        self.steady.start()
        self.victim.start()
        self.producer.start()
        self.sampler.start()

    # -- the faults ------------------------------------------------------------------------

    def _kill_victim(self) -> str:
        self.victim.kill()
        time.sleep(FAULT_SECONDS / 2)
        self.victim.start()
        return "victim SIGKILLed, restarted 5 s later"

    def _stripe_503(self) -> str:
        self.emulator.configure(outage=True)
        time.sleep(FAULT_SECONDS)
        self.emulator.configure(outage=False)
        return "every request answered 503"

    def _stripe_refused(self) -> str:
        self.emulator.stop()
        time.sleep(FAULT_SECONDS)
        self.emulator.start()
        return "emulator stopped: connection refused"

    def _storm_429(self) -> str:
        self.emulator.configure(rate_limit_rate=1.0, retry_after_seconds=2.0)
        time.sleep(FAULT_SECONDS)
        self.emulator.configure(rate_limit_rate=0.0)
        return "every request 429, Retry-After 2 s"

    def _sessions_expiring(self) -> str:
        self.emulator.configure(session_max_requests=3)
        time.sleep(FAULT_SECONDS)
        self.emulator.configure(session_max_requests=None)
        return "sessions expire after 3 requests"

    def _sessions_refused(self) -> str:
        self.emulator.configure(session_expire_every=5)
        time.sleep(FAULT_SECONDS)
        self.emulator.configure(session_expire_every=None)
        return "every 5th request expires its session, fresh ones included"

    def _latency_spike(self) -> str:
        self.emulator.configure(latency_ms=SPIKE_LATENCY_MS)
        time.sleep(FAULT_SECONDS)
        self.emulator.configure(latency_ms=20)
        return f"latency {SPIKE_LATENCY_MS:g} ms, timeout {REQUEST_TIMEOUT_SECONDS:g} s"

    def _dlq_unwritable(self) -> str:
        bootstrap = self.kafka.bootstrap_servers
        _alter_topic_config(bootstrap, self.dlq, "max.message.bytes", "1")
        time.sleep(FAULT_SECONDS * 2)
        _alter_topic_config(bootstrap, self.dlq, "max.message.bytes", None)
        return "dead-letter topic max.message.bytes=1 for 20 s"

    def _broker_restart(self) -> str:
        self.kafka.stop()
        time.sleep(FAULT_SECONDS)
        self.kafka.start()
        return "broker stopped 10 s, restarted with the same data"

    def fault_plan(self) -> list[tuple[str, Callable[[], str]]]:
        return [
            ("sigkill", self._kill_victim),
            ("stripe_503", self._stripe_503),
            ("429_storm", self._storm_429),
            ("sessions_expiring", self._sessions_expiring),
            ("broker_restart", self._broker_restart),
            ("stripe_refused", self._stripe_refused),
            ("latency_spike", self._latency_spike),
            ("dlq_unwritable", self._dlq_unwritable),
            ("sessions_refused", self._sessions_refused),
        ]

    def inject(self, kind: str, fault: Callable[[], str]) -> FaultRecord:
        sampler = self.sampler
        began = time.monotonic()
        rate_before = sampler.rate(began - RATE_WINDOW_SECONDS, began)
        notes = fault()
        ended = time.monotonic()
        owed = self.ledger.good_count  # every good record produced up to now
        billed_then = sampler.billed_at(ended)
        record = FaultRecord(
            kind=kind,
            at_seconds=round(began - sampler.started, 1),
            duration_seconds=round(ended - began, 1),
            rate_before=round(rate_before, 1),
            notes=notes,
        )
        record.recovery_seconds = sampler.wait_for(
            lambda: self.emulator.state.events_accepted > billed_then, since=ended, timeout=120
        )
        record.catch_up_seconds = sampler.wait_for(
            lambda: self.emulator.state.events_accepted >= owed, since=ended, timeout=180
        )
        time.sleep(RATE_WINDOW_SECONDS)
        now = time.monotonic()
        record.rate_after = round(sampler.rate(now - RATE_WINDOW_SECONDS, now), 1)
        return record

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.args.minutes * 60
        plan = self.fault_plan()
        next_fault = time.monotonic() + min(WARM_UP_SECONDS, self.args.fault_every)
        for index in range(10**6):
            time.sleep(max(0.0, next_fault - time.monotonic()))
            if next_fault + self.args.fault_every > deadline:
                break
            kind, fault = plan[index % len(plan)]
            record = self.inject(kind, fault)
            self.faults.append(record)
            _say(
                f"{record.at_seconds:7.1f} s  {kind:<18} recovery {record.recovery_seconds} s, "
                f"caught up {record.catch_up_seconds} s, rate {record.rate_before} -> "
                f"{record.rate_after} events/s"
            )
            next_fault += self.args.fault_every
        time.sleep(max(0.0, deadline - time.monotonic()))
        return self.finish()

    def finish(self) -> dict[str, Any]:
        produced_for = time.monotonic() - self.sampler.started
        self.producer.stopping.set()
        self.producer.join(600)
        owed = self.ledger.good_count
        stopped = time.monotonic()
        caught_up = self.sampler.wait_for(
            lambda: self.emulator.state.events_accepted >= owed and self._committed_to_end(),
            since=stopped,
            timeout=FINAL_CATCH_UP_SECONDS,
        )
        rss = list(self.sampler.rss)
        self.sampler.stopping.set()
        codes = {"steady": self.steady.stop(), "victim": self.victim.stop()}
        verdict = self.verdict()
        rss_start = rss[0][1] if rss else None
        rss_end = rss[-1][1] if rss else None
        return {
            "kind": "soak",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "minutes": self.args.minutes,
            "produce_rate": self.args.rate,
            "produced_seconds": round(produced_for, 1),
            "final_catch_up_seconds": caught_up,
            "exit_codes": codes,
            "victim_starts": self.victim.starts,
            "memory": {
                "process": "steady (never killed)",
                "rss_start_mb": _mb(rss_start),
                "rss_end_mb": _mb(rss_end),
                "rss_max_mb": _mb(max((r for _, r in rss), default=None)),
                "growth_mb": _mb(rss_end - rss_start) if rss_start and rss_end else None,
                "samples": [(round(t, 1), _mb(r)) for t, r in rss],
            },
            "faults": [asdict(f) for f in self.faults],
            "totals": verdict,
        }

    def _committed_to_end(self) -> bool:
        from meterstream_local.localkafka import committed_offsets, end_offsets

        bootstrap = self.kafka.bootstrap_servers
        try:
            ends = end_offsets(bootstrap, self.topic)
            done = committed_offsets(bootstrap, f"{self.run_id}-group", self.topic)
        except Exception:  # the broker may be busy right after a restart: ask again
            return False
        return all(done.get(p, -1) >= end for p, end in ends.items())

    def verdict(self) -> dict[str, Any]:
        state = self.emulator.state
        ledger = self.ledger
        lost = [i for i in ledger.good if not state.seen(i)]
        billed: Counter[tuple[str, str]] = Counter()
        for meter, by_customer in state.totals().items():
            for customer, figures in by_customer.items():
                billed[(meter, customer)] += figures["sum"]
        letters = _dead_letter_sources(self.kafka.bootstrap_servers, self.dlq)
        positions = {(partition, offset) for partition, offset, _ in letters}
        valid_reasons = Counter(
            reason for partition, offset, reason in letters if (partition, offset) not in ledger.bad
        )
        good_billed = len(ledger.good) - len(lost)
        return {
            "records_produced": ledger.produced,
            "producer_failures": ledger.failed,
            "good_records": len(ledger.good),
            "bad_records": len(ledger.bad),
            "billed": state.events_accepted,
            "duplicates_absorbed": state.duplicates,
            "lost": len(lost),
            "double_billed": max(0, state.events_accepted - good_billed),
            "totals_exact": billed == ledger.totals,
            "dead_lettered": len(positions),
            "dead_letter_writes": len(letters),
            "bad_not_dead_lettered": len(ledger.bad - positions),
            "valid_dead_lettered": len(positions - ledger.bad),
            "valid_dead_lettered_by_reason": dict(valid_reasons),
            "committed_to_end": self._committed_to_end(),
            "exact": (
                not lost
                and state.events_accepted == good_billed
                and billed == ledger.totals
                and not (ledger.bad - positions)
                and not (positions - ledger.bad)
            ),
        }

    def close(self) -> None:
        for connector in (getattr(self, "steady", None), getattr(self, "victim", None)):
            if connector is not None and connector.alive():
                connector.kill()
        self.emulator.stop()
        self.kafka.close()


def _alter_topic_config(bootstrap: str, topic: str, key: str, value: str | None) -> None:
    """Set a topic config, or (None) return it to the broker's default."""
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    operation = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    entry = ConfigEntry(key, value or "", incremental_operation=operation)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _quiet_logger()})
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def _dead_letter_sources(bootstrap: str, topic: str) -> list[tuple[int, int, str]]:
    """(partition, offset, reason) of the source of every dead letter in ``topic``."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"soak-reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "logger": _quiet_logger(),
        }
    )
    try:
        end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)[1]
        consumer.assign([TopicPartition(topic, 0, 0)])
        sources: list[tuple[int, int, str]] = []
        seen = 0
        deadline = time.monotonic() + 120
        while seen < end and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 1.0):
                if msg.error() is not None:
                    continue
                seen = msg.offset() + 1
                headers = {k: v for k, v in msg.headers() or [] if k.startswith("meterstream.")}
                sources.append(
                    (
                        int(headers["meterstream.source.partition"]),
                        int(headers["meterstream.source.offset"]),
                        (headers.get("meterstream.reason") or b"").decode(),
                    )
                )
        return sources
    finally:
        consumer.close()


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 1_048_576, 1)


def _say(text: str) -> None:
    print(text, flush=True)


def _summary(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"soak: {report['minutes']} min at {report['produce_rate']} records/s")
    for name in ("at s", "fault", "lasted s", "recovery s", "caught up s", "rate before", "after"):
        table.add_column(name, justify="left" if name == "fault" else "right")
    for fault in report["faults"]:
        table.add_row(
            f"{fault['at_seconds']:.0f}",
            fault["kind"],
            f"{fault['duration_seconds']:.0f}",
            str(fault["recovery_seconds"]),
            str(fault["catch_up_seconds"]),
            f"{fault['rate_before']:.0f}",
            f"{fault['rate_after']:.0f}",
        )
    console = Console()
    console.print(table)
    memory = report["memory"]
    totals = report["totals"]
    console.print(
        f"RSS of the steady process: {memory['rss_start_mb']} MB -> {memory['rss_end_mb']} MB "
        f"(max {memory['rss_max_mb']} MB)"
    )
    console.print(
        f"produced {totals['records_produced']:,} ({totals['good_records']:,} good, "
        f"{totals['bad_records']:,} bad); billed {totals['billed']:,}; dead-lettered "
        f"{totals['dead_lettered']:,}; duplicates absorbed {totals['duplicates_absorbed']:,}; "
        f"lost {totals['lost']}; double-billed {totals['double_billed']}; "
        f"exact: {totals['exact']}; committed to the end: {totals['committed_to_end']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="run length (default 10)")
    parser.add_argument("--rate", type=float, default=1000.0, help="records/s (default 1000)")
    parser.add_argument(
        "--fault-every", type=float, default=40.0, help="seconds between faults (default 40)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the emulator's jitter")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meterstream-soak-") as scratch:
        soak = Soak(args, Path(scratch))
        try:
            soak.start()
            report = soak.run()
        finally:
            logs = {name: (Path(scratch) / f"{name}.log") for name in ("steady", "victim")}
            tails = {
                name: path.read_text(errors="replace").splitlines()[-20:]
                for name, path in logs.items()
                if path.exists()
            }
            soak.close()
    report["log_tails"] = tails
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    temporary.replace(args.output)
    _summary(report)
    print(f"written to {args.output}")
    return 0 if report["totals"]["exact"] and report["totals"]["committed_to_end"] else 1


if __name__ == "__main__":
    sys.exit(main())
