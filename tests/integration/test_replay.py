"""``meterstream replay`` against the real broker and the emulator.

Dead letters are made by the connector itself (a mapping whose customer path is wrong
dead-letters every record as ``mapping_error``), or, for the filter tests, written to the
dead-letter topic here in the documented letter format with chosen reasons and times.
What was billed is read back from the emulator: accepted identifiers, totals, duplicates.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer

from connector.timestamps import format_rfc3339_ms
from tests.integration.harness import (
    REPO,
    committed,
    end_offsets,
    headers_of,
    produce,
    read_topic,
    run_meterstream,
    wait_until,
)
from tests.integration.stripe_api import API_KEY, create_meter
from tests.integration.test_connector import World, world_factory  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

ENV = {"STRIPE_API_KEY": API_KEY}
#: A config whose customer path is wrong: every record is dead-lettered as mapping_error.
BROKEN = {"customer": "account"}
#: Bound for one replay run on a busy 2-core machine.
REPLAY_TIMEOUT_SECONDS = 120


def produce_at(
    bootstrap: str,
    topic: str,
    records: list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]], int | None]],
) -> list[tuple[int, int]]:
    """Produce (partition, key, value, headers, timestamp ms) in order; their (partition,
    offset) as the broker acknowledged them."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    where: dict[int, tuple[int, int]] = {}
    failed: list[str] = []
    for index, (partition, key, value, headers, stamp) in enumerate(records):

        def report(err: Any, msg: Any, index: int = index) -> None:
            if err is not None:
                failed.append(str(err))
            else:
                where[index] = (msg.partition(), msg.offset())

        kwargs: dict[str, Any] = {"timestamp": stamp} if stamp is not None else {}
        producer.produce(
            topic,
            key=key,
            value=value,
            headers=headers,
            partition=partition,
            on_delivery=report,
            **kwargs,
        )
        producer.poll(0)
    producer.flush(30)
    assert not failed, failed[:3]
    return [where[i] for i in range(len(records))]


def clean_environment() -> dict[str, str]:
    """The test runner's environment without METERSTREAM_* settings, plus the API key."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("METERSTREAM_")}
    return {**kept, **ENV}


def replay(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_meterstream(
        "replay", "--config", str(config), *args, env=ENV, timeout=REPLAY_TIMEOUT_SECONDS
    )


def table(stdout: str) -> dict[str, list[str]]:
    """The replay's table: reason -> its cells after the reason."""
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["REASON", "READ", "SKIPPED"], stdout
    rows: dict[str, list[str]] = {}
    for line in lines[1:]:
        cells = line.split()
        rows[cells[0]] = cells[1:]
        if cells[0] == "total":
            break
    return rows


def usage(index: int, customer: str, value: int, **fields: Any) -> bytes:
    body = {"customer": customer, "event_name": "api_requests", "value": value, **fields}
    return orjson.dumps(body)


def replay_group(world: World) -> str:
    return world.group_id + ".replay"


def summary(base_url: str, meter_id: str, customer: str, start: int, end: int) -> float:
    """A meter's aggregated value for a customer over [start, end), from Stripe's API."""
    response = httpx.get(
        f"{base_url}/v1/billing/meters/{meter_id}/event_summaries",
        params={"customer": customer, "start_time": start, "end_time": end},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return sum(float(row["aggregated_value"]) for row in response.json()["data"])


def test_a_fixed_mapping_bills_every_dead_letter_once_with_the_connectors_identifiers(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=2, auto_meters=False)
    meter = create_meter(world.emulator.base_url, "api_requests")
    now = time.time()
    hour = int(now) // 3600 * 3600
    two_hours_ago_ms = (hour - 2 * 3600 + 600) * 1000
    records: list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]], int | None]] = []
    expected: Counter[str] = Counter()
    for index in range(40):
        customer = f"cus_{index % 3}"
        if index % 4 == 0:  # own id, own timestamp
            value = usage(
                index, customer, index + 1, id=f"r-{index}", timestamp=format_rfc3339_ms(now - 60)
            )
            stamp = None
        elif index % 4 == 1:  # derived identifier, own timestamp
            value = usage(index, customer, index + 1, timestamp=format_rfc3339_ms(now - 60))
            stamp = None
        else:  # derived identifier, the Kafka timestamp of two hours ago
            value = usage(index, customer, index + 1)
            stamp = two_hours_ago_ms
        records.append((index % 2, customer.encode(), value, [("trace", b"t")], stamp))
        expected[customer] += index + 1
    positions = produce_at(world.bootstrap, world.topic, records)
    world.run_until_idle(world.config(mapping=BROKEN))
    assert world.events()["accepted"] == 0
    letters = read_topic(world.bootstrap, world.dead_letter_topic, expect=40)
    assert Counter(headers_of(m)["meterstream.reason"] for m in letters) == {"mapping_error": 40}
    fixed = world.config()

    # A dry run says what would happen and changes nothing.
    dry = replay(fixed, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert table(dry.stdout)["mapping_error"] == ["40", "0", "40", "0"]
    assert "nothing sent, written or committed" in dry.stdout.splitlines()[-1]
    assert world.events()["accepted"] == 0
    assert world.emulator.stats()["requests"]["by_endpoint"].get("stream", 0) == 0
    assert set(
        committed(world.bootstrap, replay_group(world), world.dead_letter_topic, 1).values()
    ) == {-1001}

    done = replay(fixed)

    assert done.returncode == 0, done.stdout + done.stderr
    assert table(done.stdout)["mapping_error"] == ["40", "0", "40", "0"]
    events = world.events()
    assert events["accepted"] == 40
    assert events["duplicates"] == 0
    assert world.billed() == Counter({("api_requests", c): v for c, v in expected.items()})
    for index, (partition, offset) in enumerate(positions):
        identifier = f"r-{index}" if index % 4 == 0 else f"{world.topic}/{partition}/{offset}"
        assert world.emulator.state.seen(identifier), f"record {index}: {identifier} not billed"
    # Records without a timestamp are billed at their own Kafka timestamp, not the letter's.
    old = sum(
        summary(world.emulator.base_url, meter["id"], f"cus_{c}", hour - 3 * 3600, hour - 3600)
        for c in range(3)
    )
    assert old == sum(i + 1 for i in range(40) if i % 4 >= 2)
    ends = end_offsets(world.bootstrap, world.dead_letter_topic, 1)
    assert committed(world.bootstrap, replay_group(world), world.dead_letter_topic, 1) == ends
    # The connector's own group is untouched by the replay.
    assert committed(world.bootstrap, world.group_id, world.dead_letter_topic, 1) == {0: -1001}

    again = replay(fixed)

    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[-1].startswith("replayed 0 letters")
    assert world.events()["accepted"] == 40


def test_a_replay_killed_midway_and_run_again_bills_every_letter_once(
    world_factory: Callable[..., World],  # noqa: F811
    tmp_path: Path,
) -> None:
    world = world_factory(partitions=2, auto_meters=False, latency_ms=20)
    create_meter(world.emulator.base_url, "api_requests")
    now = time.time()
    total = 300
    records: list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]], int | None]] = []
    for index in range(total):
        fields: dict[str, Any] = {"timestamp": format_rfc3339_ms(now - 60)}
        if index % 2:
            fields["id"] = f"k-{index}"
        records.append((index % 2, None, usage(index, "cus_kill", 1, **fields), [], None))
    positions = produce_at(world.bootstrap, world.topic, records)
    world.run_until_idle(world.config(mapping=BROKEN))
    # Slow and small on purpose: one request of 5 events at a time, so the kill lands midway.
    fixed = world.config(batching={"max_events": 5, "max_in_flight": 1, "linger_ms": 5})
    log_path = tmp_path / "replay-killed.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "connector", "replay", "--config", str(fixed)],
            cwd=REPO,
            env=clean_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: world.events()["accepted"] >= 100 or process.poll() is not None,
                timeout=REPLAY_TIMEOUT_SECONDS,
                what="the replay to bill 100 letters",
            )
            assert process.poll() is None, log_path.read_text()
            process.send_signal(signal.SIGKILL)
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert world.events()["accepted"] < total, "killed in the middle, not at the end"
    committed_at_kill = sum(
        max(0, offset)
        for offset in committed(
            world.bootstrap, replay_group(world), world.dead_letter_topic, 1
        ).values()
    )

    rerun = replay(fixed)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    rows = table(rerun.stdout)
    assert rows["mapping_error"] == [
        str(total - committed_at_kill),
        "0",
        str(total - committed_at_kill),
        "0",
    ]
    events = world.events()
    assert events["accepted"] == total, "every letter billed once, resends absorbed"
    assert world.billed() == Counter({("api_requests", "cus_kill"): total})
    for index, (partition, offset) in enumerate(positions):
        identifier = f"k-{index}" if index % 2 else f"{world.topic}/{partition}/{offset}"
        assert world.emulator.state.seen(identifier), identifier
    ends = end_offsets(world.bootstrap, world.dead_letter_topic, 1)
    assert committed(world.bootstrap, replay_group(world), world.dead_letter_topic, 1) == ends


def test_what_still_fails_goes_back_with_its_new_reason_unchanged_and_is_not_read_again(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    # Refusals answered with 400, so that they come back as rejected_by_stripe.
    world = world_factory(partitions=1, auto_meters=False, sync_validation=True)
    create_meter(world.emulator.base_url, "api_requests")
    stamp = format_rfc3339_ms(time.time() - 60)
    records: list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]], int | None]] = []
    for index in range(12):
        kind = ("curable", "curable", "no_customer", "no_meter")[index % 4]
        body: dict[str, Any] = {"id": f"f-{index}", "value": 3, "timestamp": stamp}
        body["event_name"] = "no_such_meter" if kind == "no_meter" else "api_requests"
        if kind != "no_customer":
            body["customer"] = "cus_fix"
        headers = [("trace-id", f"t-{index}".encode()), ("tenant", b"acme")]
        records.append((0, f"key-{index}".encode(), orjson.dumps(body), headers, None))
    produce_at(world.bootstrap, world.topic, records)
    world.run_until_idle(world.config(mapping=BROKEN))
    first = read_topic(world.bootstrap, world.dead_letter_topic, expect=12)
    assert {headers_of(m)["meterstream.attempts"] for m in first} == {"0"}
    # Stripe itself refuses events of a name without a meter when the preflight is off.
    without_preflight = world.config(meters={"preflight": False})

    done = replay(without_preflight)

    assert done.returncode == 0, done.stdout + done.stderr
    assert table(done.stdout)["mapping_error"] == ["12", "0", "6", "6"]
    assert "mapping_error: 3 dead-lettered again as mapping_error, e.g. customer is missing" in (
        done.stdout
    )
    assert "mapping_error: 3 dead-lettered again as rejected_by_stripe" in done.stdout
    assert world.events()["accepted"] == 6
    assert world.billed() == Counter({("api_requests", "cus_fix"): 18})
    # Not read again in the same run: committed to where the topic ended when it started.
    assert committed(world.bootstrap, replay_group(world), world.dead_letter_topic, 1) == {0: 12}
    letters = read_topic(world.bootstrap, world.dead_letter_topic, expect=18)
    old = {headers_of(m)["meterstream.source.offset"]: m for m in letters if m.offset() < 12}
    new = [m for m in letters if m.offset() >= 12]
    assert len(new) == 6
    for letter in new:
        headers = headers_of(letter)
        index = int(headers["meterstream.source.offset"])
        original = records[index]
        before = old[str(index)]
        assert letter.key() == original[1]
        assert letter.value() == original[2], "the original bytes, unchanged"
        own = [(k, v) for k, v in letter.headers() if not k.startswith("meterstream.")]
        assert own == original[3], "the original headers, unchanged and in order"
        assert headers["meterstream.source.topic"] == world.topic
        assert headers["meterstream.source.partition"] == "0"
        for name in ("source.topic", "source.partition", "source.offset", "source.timestamp"):
            key = f"meterstream.{name}"
            assert headers[key] == headers_of(before)[key], name
        assert headers["meterstream.attempts"] == "1"
        if index % 4 == 2:
            assert headers["meterstream.reason"] == "mapping_error"
        else:
            assert headers["meterstream.reason"] == "rejected_by_stripe"
            assert headers["meterstream.request_id"].startswith("req_")
            assert headers["meterstream.event_name"] == "no_such_meter"
            assert headers["meterstream.event_identifier"] == f"f-{index}"

    # Next run, with the meter preflight on: only the six new letters are read; the ones
    # for a name without a meter are refused before sending (no_active_meter).
    again = replay(world.config(meters={"preflight": True}))

    assert again.returncode == 0, again.stdout + again.stderr
    rows = table(again.stdout)
    assert rows["mapping_error"] == ["3", "0", "0", "3"]
    assert rows["rejected_by_stripe"] == ["3", "0", "0", "3"]
    assert "rejected_by_stripe: 3 dead-lettered again as no_active_meter" in again.stdout
    third = read_topic(world.bootstrap, world.dead_letter_topic, expect=24)
    assert {headers_of(m)["meterstream.attempts"] for m in third if m.offset() >= 18} == {"2"}
    assert committed(world.bootstrap, replay_group(world), world.dead_letter_topic, 1) == {0: 18}
    assert world.events()["accepted"] == 6


def synthetic_letter(
    index: int, reason: str, written_ms: int, source_topic: str
) -> tuple[int, bytes | None, bytes, list[tuple[str, bytes]], int | None]:
    """A dead letter in the documented format (README, "Dead letters"), written at a chosen
    time: a valid record with its own id, refused earlier for ``reason``."""
    body = {
        "id": f"L-{index}",
        "customer": "cus_filter",
        "event_name": "api_requests",
        "value": 10 + index,
        "timestamp": format_rfc3339_ms(time.time() - 60),
    }
    headers = {
        "reason": reason,
        "message": "synthetic",
        "source.topic": source_topic,
        "source.partition": "0",
        "source.offset": str(100 + index),
        "source.timestamp": str(written_ms - 1000),
        "version": "0.1.0",
        "attempts": "0",
    }
    encoded = [(f"meterstream.{k}", v.encode()) for k, v in headers.items()]
    return (0, None, orjson.dumps(body), encoded, written_ms)


def test_reason_since_and_until_choose_the_letters_and_a_dry_run_changes_nothing(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1, auto_meters=False)
    create_meter(world.emulator.base_url, "api_requests")
    half_hour_ms = 1800 * 1000
    base_ms = int(time.time() * 1000) - 6 * half_hour_ms
    reasons = [
        "mapping_error",  # L-0: before --since
        "invalid_json",  # L-1: a reason not asked for
        "mapping_error",  # L-2: replayed
        "rejected_by_stripe",  # L-3: a reason not asked for
        "mapping_error",  # L-4: replayed
        "mapping_error",  # L-5: after --until: the partition stops here
        "mapping_error",  # L-6: never read in that run
    ]
    letters = [
        synthetic_letter(index, reason, base_ms + index * half_hour_ms, world.topic)
        for index, reason in enumerate(reasons)
    ]
    produce_at(world.bootstrap, world.dead_letter_topic, letters)
    since = format_rfc3339_ms((base_ms + 1.5 * half_hour_ms) / 1000)
    until = format_rfc3339_ms((base_ms + 4.5 * half_hour_ms) / 1000)
    flags = ["--reason", "mapping_error", "--since", since, "--until", until]
    group = replay_group(world)

    dry = replay(world.config(), *flags, "--dry-run")

    assert dry.returncode == 0, dry.stdout + dry.stderr
    rows = table(dry.stdout)
    assert rows["mapping_error"] == ["3", "1", "2", "0"]
    assert rows["invalid_json"] == ["1", "1", "0", "0"]
    assert rows["rejected_by_stripe"] == ["1", "1", "0", "0"]
    assert world.emulator.stats()["requests"]["by_endpoint"].get("stream", 0) == 0
    assert committed(world.bootstrap, group, world.dead_letter_topic, 1) == {0: -1001}

    done = replay(world.config(), *flags)

    assert done.returncode == 0, done.stdout + done.stderr
    assert table(done.stdout) == table(dry.stdout)
    assert "1 partition stopped at --until" in done.stdout.splitlines()[-1]
    billed = {f"L-{i}" for i in range(7) if world.emulator.state.seen(f"L-{i}")}
    assert billed == {"L-2", "L-4"}
    # Skipped letters are committed past; the partition stopped at L-5, left for later.
    assert committed(world.bootstrap, group, world.dead_letter_topic, 1) == {0: 5}

    later = replay(world.config())

    assert later.returncode == 0, later.stdout + later.stderr
    assert table(later.stdout)["mapping_error"] == ["2", "0", "2", "0"]
    billed = {f"L-{i}" for i in range(7) if world.emulator.state.seen(f"L-{i}")}
    assert billed == {"L-2", "L-4", "L-5", "L-6"}
    assert world.billed() == Counter({("api_requests", "cus_filter"): 12 + 14 + 15 + 16})
    assert committed(world.bootstrap, group, world.dead_letter_topic, 1) == {0: 7}


def test_a_bad_invocation_names_the_flag(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("kafka: {topics: [usage]}\n")
    for args, flag, hint in (
        (["--reason", "no_such_reason"], "--reason", "mapping_error"),
        (["--since", "yesterday"], "--since", "RFC 3339"),
        (
            ["--since", "2026-12-02T00:00:00Z", "--until", "2026-12-01T00:00:00Z"],
            "--until",
            "--since",
        ),
        (["--timeout", "0"], "--timeout", "more than 0"),
    ):
        result = replay(config, *args)
        assert result.returncode == 2, (args, result.stderr)
        [line] = result.stderr.strip().splitlines()
        assert flag in line, line
        assert hint in line, line


def test_stripe_down_longer_than_the_timeout_exits_1_having_committed_what_resolved(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1, auto_meters=False, outage=True)
    create_meter(world.emulator.base_url, "api_requests")
    written_ms = int(time.time() * 1000) - 60_000
    letters = [synthetic_letter(i, "invalid_json", written_ms, world.topic) for i in range(3)]
    letters += [synthetic_letter(i, "mapping_error", written_ms, world.topic) for i in range(3, 6)]
    produce_at(world.bootstrap, world.dead_letter_topic, letters)

    down = replay(world.config(), "--timeout", "3")

    assert down.returncode == 1, down.stdout + down.stderr
    last = down.stdout.splitlines()[-1]
    assert last.startswith("replay did not finish: nothing moved for 3 s (--timeout): Stripe:")
    assert "503" in last
    assert table(down.stdout)["mapping_error"] == ["3", "0", "0", "0", "3"]
    assert world.events()["accepted"] == 0
    # The skipped prefix resolved and is committed; the unsent letters are not.
    group = replay_group(world)
    assert committed(world.bootstrap, group, world.dead_letter_topic, 1) == {0: 3}
    dlq = read_topic(world.bootstrap, world.dead_letter_topic, expect=6)
    assert len(dlq) == 6, "an outage dead-letters nothing"

    world.emulator.configure(outage=False)
    back = replay(world.config())

    assert back.returncode == 0, back.stdout + back.stderr
    assert table(back.stdout)["mapping_error"] == ["3", "0", "3", "0"]
    assert world.events()["accepted"] == 3
    assert committed(world.bootstrap, group, world.dead_letter_topic, 1) == {0: 6}


def test_sigterm_stops_a_replay_that_commits_what_was_billed_and_leaves_the_rest(
    world_factory: Callable[..., World],  # noqa: F811
    tmp_path: Path,
) -> None:
    world = world_factory(partitions=1, auto_meters=False, latency_ms=20)
    create_meter(world.emulator.base_url, "api_requests")
    written_ms = int(time.time() * 1000) - 60_000
    total = 200
    letters = [synthetic_letter(i, "mapping_error", written_ms, world.topic) for i in range(total)]
    produce_at(world.bootstrap, world.dead_letter_topic, letters)
    slow = world.config(batching={"max_events": 5, "max_in_flight": 1, "linger_ms": 5})
    log_path = tmp_path / "replay-stopped.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "connector", "replay", "--config", str(slow)],
            cwd=REPO,
            env=clean_environment(),
            stdout=subprocess.PIPE,
            stderr=log,
        )
        try:
            wait_until(
                lambda: world.events()["accepted"] >= 50 or process.poll() is not None,
                timeout=REPLAY_TIMEOUT_SECONDS,
                what="the replay to bill 50 letters",
            )
            process.send_signal(signal.SIGTERM)
            stdout, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert process.returncode == 1, log_path.read_text()
    out = stdout.decode()
    assert out.splitlines()[-1].startswith("replay did not finish: interrupted;"), out
    billed = world.events()["accepted"]
    assert 50 <= billed < total
    [cells] = [line.split() for line in out.splitlines() if line.startswith("mapping_error")]
    assert cells[3] == str(billed), "every letter Stripe accepted is reported billed"
    # One request at a time, in order: what was billed is exactly the committed prefix.
    group = replay_group(world)
    assert committed(world.bootstrap, group, world.dead_letter_topic, 1) == {0: billed}

    rest = replay(slow)

    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert table(rest.stdout)["mapping_error"] == [
        str(total - billed),
        "0",
        str(total - billed),
        "0",
    ]
    events = world.events()
    assert events["accepted"] == total
    assert events["duplicates"] == 0, "a clean stop leaves nothing sent and uncommitted"
    assert committed(world.bootstrap, group, world.dead_letter_topic, 1) == {0: total}


def test_dead_letters_for_a_missing_meter_are_billed_once_the_meter_exists(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    """The run refuses events no meter takes (no_active_meter); someone creates the meter;
    replay bills every one of them, exactly once, with the connector's identifiers."""
    world = world_factory(partitions=2, auto_meters=False)
    create_meter(world.emulator.base_url, "api_requests")
    records = [
        orjson.dumps(
            {"id": f"m-{i}", "customer": f"cus_{i % 3}", "event_name": name, "value": 1 + i % 4}
        )
        for i, name in enumerate(["api_requests", "gpu_seconds"] * 40)
    ]
    produce(world.bootstrap, world.topic, [(None, value) for value in records])
    checked = world.config(meters={"preflight": True})
    world.run_until_idle(checked)
    assert world.events()["accepted"] == 40
    letters = read_topic(world.bootstrap, world.dead_letter_topic, expect=40)
    assert {headers_of(m)["meterstream.reason"] for m in letters} == {"no_active_meter"}

    create_meter(world.emulator.base_url, "gpu_seconds")
    done = replay(checked)

    assert done.returncode == 0, done.stdout + done.stderr
    events = world.events()
    assert events["accepted"] == 80
    assert events["duplicates"] == 0
    gpu = world.billed()
    assert sum(v for (meter, _c), v in gpu.items() if meter == "gpu_seconds") == sum(
        1 + i % 4 for i in range(1, 80, 2)
    )
    assert table(done.stdout)["no_active_meter"][:3] == ["40", "0", "40"]


def test_a_fanned_out_record_with_two_refused_events_gets_two_letters_both_replayed(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    """Each refused event of a fanned-out record has its own letter naming it: replay bills
    both once their meters exist, and the event that was accepted is never sent again."""
    world = world_factory(partitions=1, auto_meters=False, sync_validation=True)
    create_meter(world.emulator.base_url, "api_calls")
    records = [
        orjson.dumps({"id": f"fo-{i}", "customer": "cus_fan", "calls": 1, "gpu": 2, "cpu": 3})
        for i in range(10)
    ]
    produce(world.bootstrap, world.topic, [(None, value) for value in records])
    fan_out = {
        "event_name": None,
        "fan_out": [
            {"event_name": "api_calls", "value": "calls"},
            {"event_name": "gpu_seconds", "value": "gpu"},
            {"event_name": "cpu_seconds", "value": "cpu"},
        ],
    }
    # Stripe refuses the events of names without a meter (the preflight off lets them go).
    config = world.config(mapping=fan_out, meters={"preflight": False})
    world.run_until_idle(config)
    letters = read_topic(world.bootstrap, world.dead_letter_topic, expect=20)
    named = Counter(
        (headers_of(m)["meterstream.source.offset"], headers_of(m)["meterstream.event_name"])
        for m in letters
    )
    assert named == Counter(
        {(str(i), name): 1 for i in range(10) for name in ("gpu_seconds", "cpu_seconds")}
    )
    assert {headers_of(m)["meterstream.reason"] for m in letters} == {"rejected_by_stripe"}
    assert world.events()["accepted"] == 10

    create_meter(world.emulator.base_url, "gpu_seconds")
    create_meter(world.emulator.base_url, "cpu_seconds")
    done = replay(config)

    assert done.returncode == 0, done.stdout + done.stderr
    assert table(done.stdout)["rejected_by_stripe"][:3] == ["20", "0", "20"]
    events = world.events()
    assert events["accepted"] == 30
    assert events["duplicates"] == 0
    assert world.billed() == Counter(
        {
            ("api_calls", "cus_fan"): 10,
            ("gpu_seconds", "cus_fan"): 20,
            ("cpu_seconds", "cus_fan"): 30,
        }
    )
