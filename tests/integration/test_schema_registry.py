"""Records encoded through a Schema Registry, against a real Apicurio Registry.

Avro, Protobuf and JSON Schema records are produced with confluent-kafka's serializers (the
schema registered as producers register it), billed by ``meterstream run`` from the real
broker into the emulator, and read back: exact totals per (meter, customer), and every bad
value kind dead-lettered as ``invalid_encoding``. A registry taken away while records wait
for their schema holds them (not ready, nothing dead-lettered) until it is back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from meterstream_local import samples
from meterstream_local.emulator import EmulatorServer
from meterstream_local.registry.encode import REGISTRY_MAPPING, UsageEncoder
from tests.integration.forwarder import Forwarder
from tests.integration.harness import (
    ConnectorProcess,
    ConnectorWorld,
    committed,
    end_offsets,
    free_port,
    headers_of,
    produce,
    read_topic,
    run_meterstream,
    scrape,
    wait_until,
)

pytestmark = pytest.mark.integration

FORMATS = ("avro", "protobuf", "json_schema")
#: Good records per format: enough for several batches over two partitions.
GOOD_RECORDS = 240
IDLE_SECONDS = 1.5
RUN_TIMEOUT_SECONDS = 120
#: A schema id no registry of these tests hands out.
UNKNOWN_SCHEMA_ID = 987_654


@pytest.fixture
def world_factory(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    group_id_factory: Callable[..., str],
    tmp_path: Path,
) -> Iterator[Callable[..., ConnectorWorld]]:
    """``make(partitions=2) -> ConnectorWorld``; its processes and emulator are cleaned up."""
    made: list[ConnectorWorld] = []

    def make(partitions: int = 2) -> ConnectorWorld:
        world = ConnectorWorld(
            bootstrap=kafka_bootstrap,
            topic=topic_factory(partitions),
            dead_letter_topic=topic_factory(1, name_prefix="dlq"),
            group_id=group_id_factory(),
            partitions=partitions,
            emulator=EmulatorServer().start(),
            tmp_path=tmp_path,
        )
        made.append(world)
        return world

    yield make
    for world in made:
        for process in world.processes:
            process.ensure_stopped()
        world.emulator.stop()


def _good_records(encoder: UsageEncoder, count: int, prefix: str) -> tuple[list[Any], Any]:
    records: list[tuple[bytes | None, bytes]] = []
    expected: Any = None
    for key, value, expected in samples.generate(  # noqa: B007 - read after the loop
        count, bad_every=0, id_prefix=prefix
    ):
        records.append((key, encoder.encode_json(value)))
    return records, expected


def _bad_values(record_format: str, good: bytes) -> dict[str, bytes]:
    """One value of each bad kind, named by what its dead letter's message must say."""
    header = good[:5]  # magic byte and the registered schema id
    garbage = {
        # A string whose length runs past the end of the value.
        "avro": b"\x7f",
        # Message index [0], then field 1 (a string) claiming 127 bytes that are not there.
        "protobuf": b"\x00\x0a\x7fab",
        # Valid JSON that breaks the schema (id must be a string; fields are missing).
        "json_schema": b'{"id": 3}',
    }[record_format]
    return {
        "Confluent wire format": b'{"id": "plain", "customer": "cus_1", "value": 1}',
        "does not have": b"\x00" + UNKNOWN_SCHEMA_ID.to_bytes(4, "big") + good[5:],
        "does not decode": header + garbage,
    }


def _billed(emulator: EmulatorServer) -> Counter[tuple[str, str]]:
    totals: Counter[tuple[str, str]] = Counter()
    for meter, report in emulator.stats()["meters"].items():
        for customer, figures in report["customers"].items():
            totals[(meter, customer)] += figures["sum"]
    return totals


def test_each_format_bills_exactly_and_dead_letters_every_bad_value(
    world_factory: Callable[..., ConnectorWorld], schema_registry_url: str
) -> None:
    runs: list[tuple[str, ConnectorWorld, Any, dict[str, bytes], ConnectorProcess]] = []
    for record_format in FORMATS:
        world = world_factory()
        with UsageEncoder(schema_registry_url, record_format, world.topic) as encoder:
            good, expected = _good_records(encoder, GOOD_RECORDS, record_format)
        bad = _bad_values(record_format, good[0][1])
        # Bad values among the good ones, on every partition (keys spread them).
        records = good[:100] + [(f"bad-{i}".encode(), v) for i, v in enumerate(bad.values())]
        records += good[100:]
        assert produce(world.bootstrap, world.topic, records) == len(records)
        config = world.config(
            records={"format": record_format},
            schema_registry={"url": schema_registry_url},
            mapping=REGISTRY_MAPPING,
        )
        # All three formats run at once: one wait for the three.
        process = world.connector(config, until_idle=IDLE_SECONDS)
        runs.append((record_format, world, expected, bad, process))

    for record_format, world, expected, bad, process in runs:
        code = process.wait(RUN_TIMEOUT_SECONDS)
        assert code == 0, f"{record_format}: exited {code}; log tail:\n{process.log_tail()}"
        billed = _billed(world.emulator)
        assert billed == expected.totals, f"{record_format}: totals differ"
        assert world.emulator.stats()["events"]["accepted"] == GOOD_RECORDS
        letters = read_topic(world.bootstrap, world.dead_letter_topic, expect=len(bad))
        assert len(letters) == len(bad), record_format
        by_value = {letter.value(): headers_of(letter) for letter in letters}
        for says, value in bad.items():
            headers = by_value[value]  # the original value travels unchanged
            assert headers["meterstream.reason"] == "invalid_encoding", record_format
            assert says in headers["meterstream.message"], (record_format, headers)
        ends = end_offsets(world.bootstrap, world.topic, world.partitions)
        assert committed(world.bootstrap, world.group_id, world.topic, world.partitions) == ends


def test_a_registry_outage_holds_records_until_it_is_back(
    world_factory: Callable[..., ConnectorWorld], schema_registry_url: str
) -> None:
    world = world_factory()
    with UsageEncoder(schema_registry_url, "avro", world.topic) as encoder:
        good, expected = _good_records(encoder, 120, "outage")
    assert produce(world.bootstrap, world.topic, good) == len(good)
    # The connector reaches the registry through a forwarder that is down from the start:
    # the registry keeps its schemas, so the only answer it can give once back is the schema.
    registry = urlsplit(schema_registry_url)
    assert registry.hostname is not None, schema_registry_url
    assert registry.port is not None, schema_registry_url
    with Forwarder(registry.hostname, registry.port) as forwarder:
        forwarder.stop()
        port = free_port()
        config = world.config(
            records={"format": "avro"},
            schema_registry={
                "url": f"http://127.0.0.1:{forwarder.port}{registry.path}",
                "request_timeout_seconds": 2,
            },
            mapping=REGISTRY_MAPPING,
            metrics={"enabled": True, "host": "127.0.0.1", "port": port},
        )
        process = world.connector(config, until_idle=IDLE_SECONDS)

        def not_ready_for_the_registry() -> bool:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            except httpx.TransportError:
                return False
            return answer.status_code == 503 and "schema_registry" in answer.json()["problems"]

        wait_until(not_ready_for_the_registry, timeout=60, what="/readyz to name the registry")
        wait_until(
            lambda: scrape(port).get("meterstream_paused_partitions", 0) > 0,
            timeout=30,
            what="fetching to pause",
        )
        # Held, not lost and not refused: nothing billed, dead-lettered or committed.
        assert world.emulator.stats()["events"]["accepted"] == 0
        assert read_topic(world.bootstrap, world.dead_letter_topic, expect=0) == []
        positions = committed(world.bootstrap, world.group_id, world.topic, world.partitions)
        assert set(positions.values()) <= {-1001, 0}, positions

        forwarder.start()  # the registry is back, at the same URL
        code = process.wait(RUN_TIMEOUT_SECONDS)
        assert code == 0, f"exited {code}; log tail:\n{process.log_tail()}"

    assert _billed(world.emulator) == expected.totals
    assert world.emulator.stats()["events"]["accepted"] == len(good)
    assert read_topic(world.bootstrap, world.dead_letter_topic, expect=0) == []
    ends = end_offsets(world.bootstrap, world.topic, world.partitions)
    assert committed(world.bootstrap, world.group_id, world.topic, world.partitions) == ends
    assert "Schema Registry answers again" in process.log_path.read_text()


def test_the_demo_bills_avro_records_and_reconciles_them(
    kafka_bootstrap: str, schema_registry_url: str
) -> None:
    result = run_meterstream(
        "demo",
        "--format",
        "avro",
        "--records",
        "600",
        "--bad-every",
        "25",
        env={
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "SCHEMA_REGISTRY_URL": schema_registry_url,
            "COLUMNS": "120",
        },
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "every record billed exactly once or dead-lettered" in out
    assert "records produced: 600" in out
    assert "dead-lettered: 24" in out
    assert "invalid_encoding" in out
    assert "✗" not in out
