"""One reliability scenario's world: a broker slice, the emulator, connector processes, a ledger.

The ledger is what was produced and what a correct connector must do with it: every good
record billed once under its identifier, every bad record in the dead-letter topic. The
verdict (``ReliabilityWorld.verify``) is read back from the real things only: the
emulator's accepted identifiers and totals, the dead-letter topic, the group's committed
offsets. A ``Progress`` thread samples the emulator's accepted count so a scenario can say
how long billing took to resume after each fault.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from meterstream_local import samples
from meterstream_local.emulator import EmulatorServer
from tests.integration.harness import (
    ConnectorProcess,
    ConnectorWorld,
    committed,
    end_offsets,
    wait_until,
)
from tests.reliability.report import ScenarioRow

#: Burst-mode idle time: outlasts the batcher's linger and a commit interval.
IDLE_SECONDS = 1.5
#: Bound for one burst-mode run of a few thousand records on a busy 2-core machine.
RUN_TIMEOUT_SECONDS = 180
#: How often the progress thread samples the emulator's accepted count.
SAMPLE_EVERY_SECONDS = 0.02
#: Log lines that mean the connector crashed or hit a bug, whatever its exit code.
CRASH_MARKERS = ("Traceback (most recent call last)", "failed unexpectedly")

Position = tuple[int, int]  # (partition, offset)


def letter_headers(message: Any) -> dict[str, str]:
    """The ``meterstream.*`` headers of a dead letter (the last of each name wins: the
    connector appends its own after the original headers, which may hold anything)."""
    found: dict[str, str] = {}
    for key, value in message.headers() or []:
        if key.startswith("meterstream."):
            found[key] = (value or b"").decode("utf-8", "replace")
    return found


@dataclass(frozen=True)
class Outgoing:
    """One record to produce: exactly these bytes, headers and (optional) timestamp."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    #: Kafka CreateTime in ms; None lets the producer stamp it.
    timestamp_ms: int | None = None
    #: The partition to write to; None lets the partitioner choose.
    partition: int | None = None


def produce_exactly(bootstrap: str, topic: str, records: Sequence[Outgoing]) -> list[Position]:
    """Produce in order, flush, and return each record's (partition, offset)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "enable.idempotence": True}
    )
    positions: list[Position | None] = [None] * len(records)
    failed: list[str] = []

    def report_for(index: int) -> Any:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(str(err))
            else:
                positions[index] = (msg.partition(), msg.offset())

        return report

    for index, record in enumerate(records):
        kwargs: dict[str, Any] = {"key": record.key, "value": record.value}
        if record.headers:
            kwargs["headers"] = list(record.headers)
        if record.timestamp_ms is not None:
            kwargs["timestamp"] = record.timestamp_ms
        if record.partition is not None:
            kwargs["partition"] = record.partition
        while True:
            try:
                producer.produce(topic, on_delivery=report_for(index), **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0, "records still unacknowledged after 60 s"
    assert not failed, failed[:3]
    assert all(p is not None for p in positions)
    return [p for p in positions if p is not None]


def read_all(bootstrap: str, topic: str, *, timeout: float = 30) -> list[Any]:
    """Every message of ``topic`` from the start up to its current high watermarks."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        wanted = {p for p, end in ends.items() if end > 0}
        if not wanted:
            return []
        consumer.assign([TopicPartition(topic, p, 0) for p in sorted(wanted)])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while wanted:
            assert time.monotonic() < deadline, f"could not read {topic} to its end in {timeout} s"
            for msg in consumer.consume(500, 0.5):
                if msg.error() is not None:
                    continue
                messages.append(msg)
                if msg.offset() + 1 >= ends[msg.partition()]:
                    wanted.discard(msg.partition())
        return messages
    finally:
        consumer.close()


class Progress:
    """Samples the emulator's accepted-event count in a thread: when did billing resume?"""

    def __init__(self, emulator: EmulatorServer) -> None:
        self._emulator = emulator
        self._samples: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = (time.monotonic(), self._emulator.state.events_accepted)
            with self._lock:
                self._samples.append(sample)
            self._stop.wait(SAMPLE_EVERY_SECONDS)

    def accepted_at(self, moment: float) -> int:
        """The accepted count at (just before) ``moment``."""
        with self._lock:
            before = [count for when, count in self._samples if when <= moment]
        return before[-1] if before else 0

    def resumed_after(self, moment: float, *, timeout: float = 120) -> float:
        """Seconds from ``moment`` until the accepted count first grew past its value then."""
        baseline = self.accepted_at(moment)

        def grown() -> float | None:
            with self._lock:
                for when, count in self._samples:
                    if when > moment and count > baseline:
                        return max(when - moment, 1e-3)
            return None

        return float(wait_until(grown, timeout=timeout, what="billing to resume"))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Ledger:
    """What was produced and what each record must become."""

    records_in: int = 0
    #: identifier -> (meter, customer, value) of every good record.
    good: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    totals: Counter[tuple[str, str]] = field(default_factory=Counter)
    good_positions: set[Position] = field(default_factory=set)
    #: position -> the dead-letter reasons acceptable for that bad record.
    bad: dict[Position, frozenset[str]] = field(default_factory=dict)
    #: position -> what was produced there (to check dead letters keep the original).
    sent: dict[Position, Outgoing] = field(default_factory=dict)


@dataclass
class Verdict:
    """What the connector did, as read back from the emulator and the broker."""

    accepted: int
    duplicates: int
    good_billed: int
    lost_good: list[str]
    lost_bad: list[Position]
    double_billed: int
    dead_letters: list[Any]
    dead_lettered_positions: dict[Position, list[Any]]
    valid_dead_lettered: list[Position]
    wrong_totals: dict[tuple[str, str], tuple[int, int]]

    @property
    def lost(self) -> int:
        return len(self.lost_good) + len(self.lost_bad)


@dataclass
class ReliabilityWorld(ConnectorWorld):
    """One scenario's slice of the local world, with its ledger (see module docstring)."""

    row: ScenarioRow
    ledger: Ledger = field(default_factory=Ledger)
    progress: Progress = field(init=False)

    def __post_init__(self) -> None:
        self.progress = Progress(self.emulator)

    # -- what Stripe (the emulator) saw ----------------------------------------------------

    @property
    def billed_now(self) -> int:
        """Distinct events the emulator has accepted so far."""
        return self.emulator.state.events_accepted

    def wait_billed(self, at_least: int, *, what: str, timeout: float = 90) -> None:
        """Wait until the emulator has accepted ``at_least`` distinct events."""
        wait_until(lambda: self.billed_now >= at_least, timeout=timeout, what=what)

    def answered(self, status: int) -> int:
        """How many Stripe requests the emulator answered with ``status``."""
        by_status: dict[str, int] = self.emulator.stats()["requests"]["by_status"]
        return by_status.get(str(status), 0)

    # -- running the connector -------------------------------------------------------------

    def run_until_idle(self, config: Path, **kwargs: Any) -> ConnectorProcess:
        process = self.connector(config, until_idle=IDLE_SECONDS, **kwargs)
        code = process.wait(RUN_TIMEOUT_SECONDS)
        assert code == 0, f"connector exited {code}; log tail:\n{process.log_tail()}"
        return process

    def wait_exit(self, process: ConnectorProcess, timeout: float = RUN_TIMEOUT_SECONDS) -> None:
        code = process.wait(timeout)
        assert code == 0, f"connector exited {code}; log tail:\n{process.log_tail()}"

    def assert_no_crash(self) -> None:
        """No connector log of this scenario shows a traceback or an unexpected failure."""
        for process in self.processes:
            text = process.log_path.read_text(errors="replace")
            for marker in CRASH_MARKERS:
                assert marker not in text, f"{marker!r} in {process.log_path}:\n{text[-3000:]}"

    # -- producing ---------------------------------------------------------------------------

    def produce(self, records: Sequence[Outgoing], verdicts: Sequence[Any]) -> list[Position]:
        """Produce records; ``verdicts[i]`` is (identifier, meter, customer, value) for a
        good record or a frozenset of acceptable dead-letter reasons for a bad one."""
        positions = produce_exactly(self.bootstrap, self.topic, records)
        ledger = self.ledger
        for record, position, verdict in zip(records, positions, verdicts, strict=True):
            ledger.records_in += 1
            ledger.sent[position] = record
            if isinstance(verdict, frozenset):
                ledger.bad[position] = verdict
            else:
                identifier, meter, customer, value = verdict
                assert identifier not in ledger.good, f"identifier {identifier!r} used twice"
                ledger.good[identifier] = (meter, customer, value)
                ledger.totals[(meter, customer)] += value
                ledger.good_positions.add(position)
        self.row.records_in = ledger.records_in
        return positions

    def produce_samples(
        self, count: int, *, bad_every: int = 0, seed: int = 7, id_prefix: str | None = None
    ) -> None:
        """Realistic usage from ``meterstream_local.samples`` (ids ``<prefix>-<n>``)."""
        prefix = id_prefix or f"r{uuid.uuid4().hex[:6]}"
        records: list[Outgoing] = []
        verdicts: list[Any] = []
        bad_before: Counter[str] = Counter()
        for key, value, expected in samples.generate(
            count, bad_every=bad_every, seed=seed, id_prefix=prefix
        ):
            records.append(Outgoing(key, value))
            if expected.bad != bad_before:
                reasons = frozenset(expected.bad - bad_before)
                bad_before = Counter(expected.bad)
                verdicts.append(reasons)
            else:
                body = orjson.loads(value)
                verdicts.append((body["id"], body["event_name"], body["customer"], body["value"]))
        self.produce(records, verdicts)

    # -- the verdict ---------------------------------------------------------------------------

    def billed_totals(self) -> Counter[tuple[str, str]]:
        totals: Counter[tuple[str, str]] = Counter()
        for meter, by_customer in self.emulator.state.totals().items():
            for customer, figures in by_customer.items():
                totals[(meter, customer)] += figures["sum"]
        return totals

    def verify(self) -> Verdict:
        """Read back what happened and fill the scenario's row; assert nothing here."""
        ledger = self.ledger
        state = self.emulator.state
        accepted = state.events_accepted
        lost_good = [identifier for identifier in ledger.good if not state.seen(identifier)]
        good_billed = len(ledger.good) - len(lost_good)
        letters = read_all(self.bootstrap, self.dead_letter_topic)
        by_position: dict[Position, list[Any]] = {}
        for letter in letters:
            headers = letter_headers(letter)
            if headers.get("meterstream.source.topic") != self.topic:
                continue
            position = (
                int(headers["meterstream.source.partition"]),
                int(headers["meterstream.source.offset"]),
            )
            by_position.setdefault(position, []).append(letter)
        billed = self.billed_totals()
        wrong = {
            key: (ledger.totals.get(key, 0), billed.get(key, 0))
            for key in set(ledger.totals) | set(billed)
            if ledger.totals.get(key, 0) != billed.get(key, 0)
        }
        verdict = Verdict(
            accepted=accepted,
            duplicates=state.duplicates,
            good_billed=good_billed,
            lost_good=lost_good,
            lost_bad=[p for p in ledger.bad if p not in by_position],
            double_billed=max(0, accepted - good_billed),
            dead_letters=letters,
            dead_lettered_positions=by_position,
            valid_dead_lettered=sorted(p for p in by_position if p in ledger.good_positions),
            wrong_totals=wrong,
        )
        row = self.row
        row.records_in = ledger.records_in
        row.billed = accepted
        row.dead_lettered = len(by_position)
        row.duplicates_absorbed = verdict.duplicates
        row.lost = verdict.lost
        row.double_billed = verdict.double_billed
        return verdict

    def assert_exactly_once(self) -> Verdict:
        """Every good record billed once, every bad one dead-lettered with an acceptable
        reason and its original bytes, nothing valid dead-lettered, offsets at the end."""
        verdict = self.verify()
        assert not verdict.lost_good, (
            f"{len(verdict.lost_good)} good records never billed, e.g. {verdict.lost_good[:5]}"
        )
        assert verdict.double_billed == 0, f"{verdict.double_billed} events billed twice or wrongly"
        assert not verdict.wrong_totals, f"totals differ: {list(verdict.wrong_totals.items())[:5]}"
        assert not verdict.valid_dead_lettered, (
            f"valid records dead-lettered: {verdict.valid_dead_lettered[:5]}"
        )
        assert not verdict.lost_bad, f"bad records not dead-lettered: {verdict.lost_bad[:5]}"
        for position, letters in verdict.dead_lettered_positions.items():
            acceptable = self.ledger.bad.get(position)
            assert acceptable is not None, f"dead letter for unknown source {position}"
            sent = self.ledger.sent[position]
            for letter in letters:
                headers = letter_headers(letter)
                assert headers["meterstream.reason"] in acceptable, (
                    f"record at {position} dead-lettered as {headers['meterstream.reason']!r}, "
                    f"expected one of {sorted(acceptable)}: {headers.get('meterstream.message')}"
                )
                assert letter.value() == sent.value, f"dead letter {position} changed the value"
                assert letter.key() == sent.key, f"dead letter {position} changed the key"
                original = list(letter.headers() or [])[: len(sent.headers)]
                assert original == list(sent.headers), f"dead letter {position} changed headers"
        self.assert_all_committed()
        self.assert_no_crash()
        return verdict

    def committed(self) -> dict[int, int]:
        return committed(self.bootstrap, self.group_id, self.topic, self.partitions)

    def assert_all_committed(self) -> None:
        ends = end_offsets(self.bootstrap, self.topic, self.partitions)
        assert self.committed() == ends

    def close(self) -> None:
        for process in self.processes:
            process.ensure_stopped()
        self.progress.stop()


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    """The connector's /readyz answer: (status, JSON body); (0, {}) while it does not listen."""
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    except httpx.TransportError:
        return 0, {}
    return answer.status_code, answer.json()


def metrics_section(port: int) -> dict[str, Any]:
    """The config section that serves the probes on ``port`` (loopback only)."""
    return {"enabled": True, "host": "127.0.0.1", "port": port}


def not_ready_because(port: int, check: str) -> str | None:
    """The /readyz problem text for ``check`` while not ready, else None."""
    status, body = readyz(port)
    if status != 503:
        return None
    problem = body.get("problems", {}).get(check)
    return str(problem) if problem else None


def wait_ready(port: int, *, timeout: float = 60) -> None:
    """Wait for /readyz to answer 200; fail with its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = readyz(port)
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz still {status} after {timeout:g} s: {body}")
        time.sleep(0.05)


def alter_topic_config(bootstrap: str, topic: str, changes: dict[str, str | None]) -> None:
    """Set topic configs (a value) or return them to the broker default (None)."""
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    entries = [
        ConfigEntry(
            key,
            value if value is not None else "",
            incremental_operation=(
                AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
            ),
        )
        for key, value in changes.items()
    ]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


#: The ``world_factory`` fixture: ``make(partitions=4, *, bootstrap=None, ...)``.
WorldFactory = Callable[..., ReliabilityWorld]
