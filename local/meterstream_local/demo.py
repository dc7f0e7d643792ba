"""``meterstream demo``: the whole pipeline on the local defaults, checked against itself.

A broker (``cluster()``: the jars broker unless KAFKA_BOOTSTRAP_SERVERS points elsewhere)
and the emulator start, realistic usage for dozens of customers and a few meters is
produced with a sprinkling of bad records, the connector runs in burst mode, and the
summary compares what Stripe's event summaries report with what was produced, and the
dead-letter topic with the bad records. Exit 0 only if everything matches.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

#: Burst-mode idle time: long enough for the last linger and commit, short for a demo.
IDLE_SECONDS = 2.0
#: A test-mode key the emulator accepts (it is not a real Stripe key).
DEMO_API_KEY = "sk_test_meterstream_demo"
#: Event summaries are read over a window wide enough for every sample timestamp.
SUMMARY_WINDOW_SECONDS = 2 * 3600
#: The demo's own Kafka clients report through logging (unconfigured: warnings only), so
#: routine librdkafka chatter (idle connections closed by the broker) stays off the screen.
_QUIET_KAFKA_LOG = logging.getLogger("meterstream.demo.kafka")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's flags."""
    parser.add_argument(
        "--records", type=int, default=20_000, help="usage records to produce (default %(default)s)"
    )
    parser.add_argument(
        "--customers", type=int, default=48, help="distinct customers (default %(default)s)"
    )
    parser.add_argument(
        "--bad-every",
        type=int,
        default=97,
        metavar="N",
        help="every N-th record is bad, to show the dead-letter topic (0: none; default "
        "%(default)s)",
    )
    parser.add_argument(
        "--partitions", type=int, default=4, help="partitions of the usage topic (default 4)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="connector worker processes (default 1)"
    )
    parser.add_argument(
        "--format",
        choices=("json", "avro", "protobuf", "json_schema"),
        default="json",
        help="how records are encoded (default json); the others register their schema in a "
        "local Apicurio Schema Registry (or SCHEMA_REGISTRY_URL) and produce the Confluent "
        "wire format; bad records are then plain JSON, dead-lettered as invalid_encoding",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="latency the emulator adds to each request (default 0; try 20 for a real network)",
    )


@dataclass
class _Outcome:
    produced: int
    expected: Any
    billed: dict[tuple[str, str], int]
    dead_letters: Counter[str]
    elapsed: float
    requests: int
    duplicates: int
    #: ``meterstream reconcile``'s exit code and summary line over the demo's window.
    reconciled: tuple[int, str] = (0, "")


def main(args: argparse.Namespace) -> int:
    """Run the demo; 0 when billed totals and dead letters match what was produced."""
    from rich.console import Console

    from connector.errors import ConfigError

    for name in ("records", "customers", "partitions", "workers"):
        if getattr(args, name) < 1:
            raise ConfigError([(f"--{name}", "must be at least 1")])
    console = Console(stderr=False)
    outcome = _run(args, console)
    return _report(console, outcome)


def _run(args: argparse.Namespace, console: Any) -> _Outcome:
    suffix = uuid.uuid4().hex[:8]
    with contextlib.ExitStack() as stack:
        registry_url = None
        if args.format != "json":
            from meterstream_local.registry import registry

            with console.status("starting the Schema Registry (first run fetches it) ..."):
                registry_url = stack.enter_context(registry())
            console.print(f"[green]Schema Registry[/] at {registry_url}")
        return _run_with(args, console, suffix, registry_url=registry_url)


def _run_with(
    args: argparse.Namespace, console: Any, suffix: str, *, registry_url: str | None
) -> _Outcome:
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import yaml
    from confluent_kafka import Producer

    from meterstream_local import samples
    from meterstream_local.emulator.client import EmulatorProcess
    from meterstream_local.localkafka import cluster, create_topics

    topic, dead_letter_topic = f"usage-demo-{suffix}", f"usage-demo-{suffix}.dlq"
    with console.status("starting Kafka (first run fetches the jars) ..."), cluster() as bootstrap:
        console.print(f"[green]Kafka[/] at {bootstrap}")
        create_topics(bootstrap, {topic: args.partitions, dead_letter_topic: 1})
        emulator_args = samples.emulator_meter_args()
        if args.latency_ms:
            emulator_args += ["--latency-ms", str(args.latency_ms)]
        with EmulatorProcess(emulator_args) as emulator:
            console.print(f"[green]Stripe emulator[/] at {emulator.base_url}")
            with console.status(f"producing {args.records:,} usage records to {topic} ..."):
                producer = Producer(
                    {
                        "bootstrap.servers": bootstrap,
                        "linger.ms": 20,
                        "acks": "all",
                        "logger": _QUIET_KAFKA_LOG,
                    }
                )
                expected: Any = None
                encoder = None
                if registry_url is not None:
                    from meterstream_local.registry.encode import UsageEncoder

                    encoder = UsageEncoder(registry_url, args.format, topic)
                bad_so_far = 0
                for key, value, expected in samples.generate(
                    args.records, customers=args.customers, bad_every=args.bad_every
                ):
                    bad = sum(expected.bad.values())
                    if encoder is None or bad > bad_so_far:
                        _produce(producer, topic, key, value)  # JSON (bad: as it comes)
                    else:
                        _produce(producer, topic, key, encoder.encode_json(value))
                    bad_so_far = bad
                producer.flush(60)
                if encoder is not None:
                    encoder.close()
                    # Plain JSON is not the wire format: every bad record is one reason.
                    expected.bad = Counter({"invalid_encoding": sum(expected.bad.values())})
            console.print(
                f"produced {expected.records:,} records ({sum(expected.bad.values())} bad) "
                f"for {args.customers} customers and {len(samples.METERS)} meters"
            )
            config = {
                "kafka": {
                    "bootstrap_servers": bootstrap,
                    "group_id": f"meterstream-demo-{suffix}",
                    "topics": [topic],
                    "dead_letter_topic": dead_letter_topic,
                },
                "stripe": {"api_base": emulator.base_url, "meter_events_base": emulator.base_url},
                "metrics": {"enabled": False},
                "logging": {"level": "ERROR"},  # the summary below is the verdict
            }
            if registry_url is not None:
                from meterstream_local.registry.encode import REGISTRY_MAPPING

                config["records"] = {"format": args.format}
                config["schema_registry"] = {"url": registry_url}
                config["mapping"] = dict(REGISTRY_MAPPING)
            with tempfile.TemporaryDirectory(prefix="meterstream-demo-") as scratch:
                path = Path(scratch) / "meterstream.yaml"
                path.write_text(yaml.safe_dump(config), encoding="utf-8")
                command = [
                    sys.executable,
                    "-m",
                    "connector",
                    "run",
                    "--config",
                    str(path),
                    "--until-idle",
                    str(IDLE_SECONDS),
                    "--workers",
                    str(args.workers),
                ]
                environment = {**_environ(), "STRIPE_API_KEY": DEMO_API_KEY}
                started = time.monotonic()
                with console.status("meterstream run --until-idle: billing the backlog ..."):
                    finished = subprocess.run(command, env=environment, check=False)
                elapsed = time.monotonic() - started - IDLE_SECONDS
                reconciled = _reconcile(path, environment) if finished.returncode == 0 else None
            if finished.returncode != 0:
                from connector.errors import MeterstreamError

                raise MeterstreamError(f"the connector exited with {finished.returncode}")
            with emulator.client() as control:
                stats = control.stats()
            billed = _billed(emulator.base_url, expected)
            dead_letters = _dead_letter_reasons(bootstrap, dead_letter_topic)
    return _Outcome(
        produced=expected.records,
        expected=expected,
        billed=billed,
        dead_letters=dead_letters,
        elapsed=max(elapsed, 1e-3),
        requests=int(stats["requests"]["by_endpoint"].get("meter_event_stream", 0)),
        duplicates=int(stats["events"]["duplicates"]),
        reconciled=reconciled or (1, "reconcile did not run"),
    )


def _reconcile(config: Any, environment: dict[str, str]) -> tuple[int, str]:
    """``meterstream reconcile`` over whole hours covering the sample usage: does Stripe
    hold what Kafka held? (exit code, its summary line)."""
    import subprocess
    import sys

    hour = 3600
    now = int(time.time())
    start, end = (now // hour - 36 * 24) * hour, (now // hour + 1) * hour  # 36 days back
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    command = [sys.executable, "-m", "connector", "reconcile", "--config", str(config)]
    command += ["--start", time.strftime(stamp, time.gmtime(start))]
    command += ["--end", time.strftime(stamp, time.gmtime(end))]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    return done.returncode, lines[-1] if lines else done.stderr.strip()[-300:]


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def _produce(producer: Any, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            return
        except BufferError:
            producer.poll(0.1)


def _billed(base_url: str, expected: Any) -> dict[tuple[str, str], int]:
    """Per (meter, customer) totals, read back through Stripe's event summaries API."""
    import httpx

    now = int(time.time()) // 60 * 60
    start, end = now - SUMMARY_WINDOW_SECONDS, now + 600
    billed: dict[tuple[str, str], int] = {}
    headers = {"Authorization": f"Bearer {DEMO_API_KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=10.0) as client:
        meters = client.get("/v1/billing/meters", params={"limit": 100}).json()["data"]
        by_name = {meter["event_name"]: meter["id"] for meter in meters}
        for meter_name, customer in expected.totals:
            meter_id = by_name.get(meter_name)
            if meter_id is None:
                billed[(meter_name, customer)] = 0
                continue
            page = client.get(
                f"/v1/billing/meters/{meter_id}/event_summaries",
                params={"customer": customer, "start_time": start, "end_time": end},
            ).json()
            billed[(meter_name, customer)] = sum(
                int(row["aggregated_value"]) for row in page["data"]
            )
    return billed


def _dead_letter_reasons(bootstrap: str, topic: str) -> Counter[str]:
    """Count the dead-letter topic's records by their ``meterstream.reason`` header."""
    from confluent_kafka import Consumer, TopicPartition

    from meterstream_local.localkafka import end_offsets

    ends = end_offsets(bootstrap, topic)
    reasons: Counter[str] = Counter()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"meterstream-demo-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "logger": _QUIET_KAFKA_LOG,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        remaining = sum(ends.values())
        deadline = time.monotonic() + 30
        while remaining > 0 and time.monotonic() < deadline:
            for message in consumer.consume(500, 1.0):
                if message.error():
                    continue
                remaining -= 1
                headers = dict(message.headers() or [])
                reason = headers.get("meterstream.reason", b"?")
                reasons[reason.decode() if isinstance(reason, bytes) else str(reason)] += 1
    finally:
        consumer.close()
    return reasons


def _report(console: Any, outcome: _Outcome) -> int:
    from rich.table import Table

    expected = outcome.expected
    meters = Table(title="Billed per meter (read back from Stripe's event summaries)")
    meters.add_column("meter")
    meters.add_column("customers", justify="right")
    meters.add_column("produced total", justify="right")
    meters.add_column("billed total", justify="right")
    meters.add_column("", justify="center")
    ok = True
    for meter in sorted({name for name, _ in expected.totals}):
        keys = [key for key in expected.totals if key[0] == meter]
        want = sum(expected.totals[key] for key in keys)
        got = sum(outcome.billed.get(key, 0) for key in keys)
        exact = all(outcome.billed.get(key) == expected.totals[key] for key in keys)
        ok = ok and exact
        meters.add_row(meter, str(len(keys)), f"{want:,}", f"{got:,}", _mark(exact))
    console.print(meters)

    customers = Table(title="Top customers")
    customers.add_column("customer")
    for meter in sorted({name for name, _ in expected.totals}):
        customers.add_column(meter, justify="right")
    per_customer: dict[str, dict[str, int]] = {}
    for (meter, customer), value in outcome.billed.items():
        per_customer.setdefault(customer, {})[meter] = value
    top = sorted(per_customer, key=lambda c: -sum(per_customer[c].values()))[:8]
    meter_names = sorted({name for name, _ in expected.totals})
    for customer in top:
        customers.add_row(customer, *(f"{per_customer[customer].get(m, 0):,}" for m in meter_names))
    console.print(customers)

    letters = Table(title="Dead-letter topic by reason")
    letters.add_column("reason")
    letters.add_column("expected", justify="right")
    letters.add_column("in the topic", justify="right")
    letters.add_column("", justify="center")
    for reason in sorted(set(expected.bad) | set(outcome.dead_letters)):
        match = expected.bad.get(reason, 0) == outcome.dead_letters.get(reason, 0)
        ok = ok and match
        letters.add_row(
            reason,
            str(expected.bad.get(reason, 0)),
            str(outcome.dead_letters.get(reason, 0)),
            _mark(match),
        )
    console.print(letters)

    events = expected.events
    console.print(
        f"records produced: {outcome.produced:,}   events billed: {events:,}   "
        f"dead-lettered: {sum(outcome.dead_letters.values()):,}\n"
        f"requests to the meter event stream: {outcome.requests:,}   duplicates absorbed "
        f"by identifiers: {outcome.duplicates:,}\n"
        f"connector time: {outcome.elapsed:.1f} s (start-up included)   throughput: "
        f"{outcome.produced / outcome.elapsed:,.0f} records/s"
    )
    code, line = outcome.reconciled
    console.print(f"meterstream reconcile: {line} {_mark(code == 0)}")
    ok = ok and code == 0
    if ok:
        console.print("[bold green]every record billed exactly once or dead-lettered[/]")
        return 0
    console.print(
        "[bold red]MISMATCH: billed totals or dead letters differ from what was produced[/]"
    )
    return 1


def _mark(ok: bool) -> str:
    return "[green]✓[/]" if ok else "[red]✗[/]"
