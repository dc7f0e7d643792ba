"""Freshness: how old usage is when Stripe accepts it, under a steady stream of records.

``python -m bench.freshness`` (part of ``make bench``; alone: ``make bench-freshness``)
starts a broker and the emulator, then for each ``batching.linger_ms`` setting (default 0
and 20) runs one connector process on a fresh topic while a producer in this process
writes ``--rate`` records/s (default 5,000) for ``--seconds`` (default 60) after a 5 s
warm-up at the same rate, each record stamped with the wall time it was produced. The
emulator stamps when it accepted each event; its ``/_emulator/freshness`` gives the
distribution of (accepted - record timestamp).

Reported per setting: p50/p90/p99/max of that lag, the request round trip measured in
the same run (the connector's ``meterstream_request_duration_seconds``, steady phase only),
the target p99 <= linger + 3 x round trip + 50 ms, and the same lag for a bare consumer
beside the connector (``kafka_only``, ``bench/kafka_lag.py``): Kafka's own share. Before
the first setting the fresh broker carries the stream for up to 20 s, not measured.
Every run is verified: the emulator accepted exactly one event per record. Figures go to
``bench/results/latest.json`` under ``"freshness"`` (the rest of the file is kept) and the
histogram to ``bench/results/freshness.png``.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from bench.chart import draw_freshness

API_KEY = "sk_test_bench_freshness"
PARTITIONS = 8
#: Steady production before measuring, at the same rate: the group has joined, every
#: partition flows, and the broker's JVM has compiled its produce and fetch paths.
WARM_UP_SECONDS = 5.0
#: The producer batches like librdkafka's default (5 ms): part of the measured lag, as in
#: production. With 0, one produce request per record overwhelms a single local broker
#: (seconds of delivery latency at 5,000 records/s on 2 cores).
PRODUCER_LINGER_MS = 5
#: Before the first setting, the fresh broker carries the same stream this long to a
#: bare consumer: measured first, a setting's p99 was its JVM warming up (whichever
#: setting came first missed by hundreds of ms, Kafka alone as much; docs/freshness.md).
BROKER_WARM_UP_SECONDS = 20.0
#: Bounds for the connector to start billing, and to bill what is left after production.
START_TIMEOUT_SECONDS = 90.0
CATCH_UP_TIMEOUT_SECONDS = 120.0
#: The producer wakes this often and writes what the rate owes since the start.
TICK_SECONDS = 0.002
#: The target's allowance beyond linger and round trips (polling, mapping, scheduling).
TARGET_SLACK_MS = 50.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__)
    parser.add_argument("--rate", type=float, default=5000.0, help="records per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="steady production time")
    parser.add_argument("--lingers", default="0,20", help="batching.linger_ms settings")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="emulator latency")
    parser.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    parser.add_argument("--log-level", default="WARNING", help="the connector's logging.level")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep the connector's logs")
    parser.add_argument(
        "--config", action="append", default=[], metavar="SECTION.KEY=YAML",
        help="another connector setting for every run (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    lingers = [int(x) for x in args.lingers.split(",") if x.strip()]

    from meterstream_local import samples
    from meterstream_local.emulator.client import EmulatorProcess
    from meterstream_local.localkafka import cluster, create_topics

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "rate": args.rate,
        "seconds": args.seconds,
        "partitions": PARTITIONS,
        "emulator_latency_ms": args.latency_ms,
        "runs": [],
    }
    knobs = samples.emulator_meter_args()
    if args.latency_ms:
        knobs += ["--latency-ms", str(args.latency_ms)]
    with (
        cluster() as bootstrap,
        EmulatorProcess(knobs) as emulator,
        emulator.client() as control,
        tempfile.TemporaryDirectory(prefix="bench-freshness-") as scratch,
    ):
        _warm_broker(bootstrap, args.rate, min(BROKER_WARM_UP_SECONDS, args.seconds))
        for linger in lingers:
            topic = f"bench-freshness-{uuid.uuid4().hex[:8]}"
            create_topics(bootstrap, {topic: PARTITIONS, f"{topic}.dlq": 1})
            control.reset()
            logs = args.log_dir or Path(scratch)
            run = _run(bootstrap, topic, emulator.base_url, control, logs, args, linger)
            results["runs"].append(run)
            _say(_line(run))
    _write(args.out, results)
    chart = args.out.with_name("freshness.png")
    draw_freshness(results, chart)
    _say(f"wrote {args.out} (key 'freshness') and {chart}")
    return 0


def _run(
    bootstrap: str,
    topic: str,
    url: str,
    control: Any,
    scratch: Path,
    args: argparse.Namespace,
    linger: int,
) -> dict[str, Any]:
    port = _free_port()
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"bench-freshness-{uuid.uuid4().hex[:8]}",
            "topics": [topic],
            "dead_letter_topic": f"{topic}.dlq",
        },
        "stripe": {"api_base": url, "meter_events_base": url},
        "batching": {"linger_ms": linger},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": port},
        "logging": {"level": args.log_level},
    }
    for setting in args.config:
        dotted, _, text = setting.partition("=")
        section, _, key = dotted.partition(".")
        config.setdefault(section, {})[key] = yaml.safe_load(text)  # type: ignore[index]
    path = scratch / f"linger-{linger}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (scratch / f"linger-{linger}.log").open("wb")
    command = [sys.executable, "-m", "connector", "run", "--config", str(path)]
    env = {**os.environ, "STRIPE_API_KEY": API_KEY}
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    # Kafka's own share of the lag, measured beside the connector (bench/kafka_lag.py).
    kafka_lag = subprocess.Popen(
        [sys.executable, "-m", "bench.kafka_lag", bootstrap, topic],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert kafka_lag.stdout is not None
    kafka_lag.stdout.readline()  # "assigned N": it reads from the end, so from now on
    producer = _Producer(bootstrap, topic)
    load_before = os.getloadavg()
    try:
        producer.steady(args.rate, min(WARM_UP_SECONDS, args.seconds))
        _await_accepted(control, producer.produced, START_TIMEOUT_SECONDS, process, log.name)
        control.reset_freshness()
        before = _request_histogram(port)
        assert kafka_lag.stdin is not None
        kafka_lag.stdin.write(f"from {time.time()}\n".encode())
        kafka_lag.stdin.flush()
        steady = producer.steady(args.rate, args.seconds)
        _await_accepted(control, producer.produced, CATCH_UP_TIMEOUT_SECONDS, process, log.name)
        after = _request_histogram(port)
        freshness = control.freshness()
        kafka, _ = kafka_lag.communicate(timeout=30)
        kafka_only = orjson.loads(kafka)
    finally:
        if kafka_lag.poll() is None:
            kafka_lag.kill()
            kafka_lag.wait()
        producer.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
    events = control.stats()["events"]
    if events["accepted"] != producer.produced:
        raise SystemExit(
            f"linger {linger} ms: the emulator accepted {events['accepted']:,} events for "
            f"{producer.produced:,} records: refusing to report a wrong run"
        )
    rtt = _round_trip(before, after)
    seconds = freshness["seconds"]
    p99_ms = 1000 * seconds["p99"]
    target_ms = linger + 3 * rtt["mean_ms"] + TARGET_SLACK_MS
    return {
        "linger_ms": linger,
        "verified": True,
        "records": steady["records"],
        "produced_per_second": steady["records"] / steady["seconds"],
        "producer_behind_ms_max": steady["behind_ms_max"],
        "events_measured": freshness["events"],
        "p50_ms": 1000 * seconds["p50"],
        "p90_ms": 1000 * seconds["p90"],
        "p99_ms": p99_ms,
        "max_ms": 1000 * seconds["max"],
        "mean_ms": 1000 * seconds["mean"],
        "round_trip_mean_ms": rtt["mean_ms"],
        "round_trip_p50_ms": rtt["p50_ms"],
        "requests": rtt["requests"],
        "events_per_request": freshness["events"] / max(rtt["requests"], 1),
        "target_p99_ms": target_ms,
        "target_met": p99_ms <= target_ms,
        # The same distribution for a bare consumer beside the connector: Kafka's share.
        "kafka_only": kafka_only,
        "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "histogram": freshness["histogram"],
    }


def _warm_broker(bootstrap: str, rate: float, seconds: float) -> None:
    """The stream at ``rate`` through a fresh broker to a bare consumer, not measured."""
    from meterstream_local.localkafka import create_topics

    topic = f"bench-freshness-warm-up-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, {topic: PARTITIONS})
    consumer = subprocess.Popen(
        [sys.executable, "-m", "bench.kafka_lag", bootstrap, topic],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    producer = _Producer(bootstrap, topic)
    try:
        assert consumer.stdout is not None
        consumer.stdout.readline()  # assigned
        producer.steady(rate, seconds)
        consumer.communicate(timeout=30)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
        producer.close()
    _say(f"broker warmed up for {seconds:.0f} s at {rate:,.0f} records/s")


class _Producer:
    """Canonical usage records stamped with the wall time they are produced."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        from connector.timestamps import format_rfc3339_ms
        from meterstream_local.samples import METERS, customer_ids

        # The lag measured starts when the record is made, producer batching included.
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": PRODUCER_LINGER_MS,
                "enable.idempotence": False,
            }
        )
        self._topic = topic
        self._stamp = format_rfc3339_ms
        self._meters = [name for name, _low, _high in METERS]
        self._customers = customer_ids(200)
        self._prefix = uuid.uuid4().hex[:8]
        self.produced = 0

    def _one(self) -> None:
        index = self.produced
        customer = self._customers[index % len(self._customers)]
        record = {
            "id": f"{self._prefix}-{index}",
            "customer": customer,
            "event_name": self._meters[index % len(self._meters)],
            "value": 1 + index % 7,
            "timestamp": self._stamp(time.time()),
        }
        while True:
            try:
                self._producer.produce(self._topic, orjson.dumps(record), customer.encode())
                break
            except BufferError:  # the local queue is full: let it drain
                self._producer.poll(0.01)
        self.produced += 1

    def steady(self, rate: float, seconds: float) -> dict[str, float]:
        """``rate`` records/s for ``seconds``: each tick writes what is owed since the start."""
        started = time.monotonic()
        first = self.produced
        behind_max = 0.0
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= seconds:
                break
            owed = int(rate * elapsed) - (self.produced - first)
            if owed > 0:
                # How late the oldest owed record is: the producer's own lag, reported.
                behind_max = max(behind_max, owed / rate)
                for _ in range(owed):
                    self._one()
            self._producer.poll(0)
            time.sleep(TICK_SECONDS)
        self._producer.flush(30)
        return {
            "records": self.produced - first,
            "seconds": time.monotonic() - started,
            "behind_ms_max": 1000 * behind_max,
        }

    def close(self) -> None:
        self._producer.flush(10)


def _await_accepted(
    control: Any, count: int, timeout: float, process: subprocess.Popen[bytes], log: str
) -> None:
    deadline = time.monotonic() + timeout
    while control.stats()["events"]["accepted"] < count:
        if process.poll() is not None:
            raise SystemExit(f"the connector exited {process.returncode}; log: {log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the connector did not bill {count:,} records in {timeout:.0f} s")
        time.sleep(0.1)


def _request_histogram(port: int) -> dict[str, float]:
    """Successful requests so far: cumulative bucket counts, plus ``sum`` and ``count``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    figures: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("meterstream_request_duration_seconds") or (
            'outcome="ok"' not in line
        ):
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("meterstream_request_duration_seconds_bucket"):
            key = name.split('le="', 1)[1].split('"', 1)[0]
        elif name.startswith("meterstream_request_duration_seconds_sum"):
            key = "sum"
        elif name.startswith("meterstream_request_duration_seconds_count"):
            key = "count"
        else:
            continue
        figures[key] = figures.get(key, 0.0) + float(value)
    return figures


def _round_trip(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean and median request duration between two scrapes (the steady phase)."""
    requests = after.get("count", 0.0) - before.get("count", 0.0)
    if requests <= 0:
        raise SystemExit("no request was answered during the steady phase")
    mean = (after["sum"] - before.get("sum", 0.0)) / requests
    buckets = sorted(
        (float(bound), count - before.get(bound, 0.0))
        for bound, count in after.items()
        if bound not in ("sum", "count")
    )
    median = next((bound for bound, count in buckets if count >= requests / 2), float("nan"))
    return {"requests": requests, "mean_ms": 1000 * mean, "p50_ms": 1000 * median}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _line(run: dict[str, Any]) -> str:
    met = "met" if run["target_met"] else "MISSED"
    return (
        f"linger {run['linger_ms']} ms: {run['records']:,} records at "
        f"{run['produced_per_second']:,.0f}/s; record -> accepted p50 {run['p50_ms']:.1f} ms, "
        f"p99 {run['p99_ms']:.1f} ms, max {run['max_ms']:.1f} ms; round trip "
        f"{run['round_trip_mean_ms']:.1f} ms mean, {run['events_per_request']:.0f} events "
        f"per request; target p99 <= {run['target_p99_ms']:.1f} ms: {met} (verified); "
        f"Kafka alone (bare consumer): p50 {run['kafka_only']['p50_ms']:.1f} ms, "
        f"p99 {run['kafka_only']['p99_ms']:.1f} ms, max {run['kafka_only']['max_ms']:.1f} ms"
    )


def _write(out: Path, figures: dict[str, Any]) -> None:
    """Put ``figures`` under "freshness" in ``out``, keeping everything else in it."""
    data: dict[str, Any] = orjson.loads(out.read_bytes()) if out.exists() else {}
    data["freshness"] = figures
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


def _say(text: str) -> None:
    print(f"bench.freshness: {text}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
