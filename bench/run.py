"""The throughput benchmark: meterstream against the ceiling and the naive way, in one run.

``python -m bench.run`` (what ``make bench`` runs) starts a broker (``cluster()``), produces
one topic of canonical usage records (1,000,000 over 8 partitions by default), then, for
each emulator latency (0 and 20 ms added per request), measures:

1. ceiling: batch consume + JSON decode only (bench/ceiling.py);
2. naive: one consumer, 100 events, a synchronous POST, commit, repeat (bench/naive.py),
   time-boxed (its rate is steady);
3. meterstream in burst mode with its defaults, then with ``--workers 2``;
4. with ``--format avro`` (or protobuf, json_schema): meterstream again, one process, on a
   second topic holding the same records in that format through a local Apicurio Schema
   Registry (or SCHEMA_REGISTRY_URL): the cost of decoding with the registry's schemas.

Every meterstream run is checked: the emulator must have accepted exactly one event per
record, so a fast wrong run is never reported. Figures go to a JSON file and a PNG chart.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
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
import psutil
import yaml

from bench.chart import draw

#: The connector waits this long with nothing new before exiting (burst mode).
IDLE_SECONDS = 2.0
#: The naive loop is time-boxed: its throughput is steady, a window measures it.
NAIVE_SECONDS = 30.0
#: How often RSS is sampled.
SAMPLE_EVERY_SECONDS = 0.1
API_KEY = "sk_test_bench"
_BUCKET = "meterstream_request_duration_seconds_bucket"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--latencies", default="0,20", help="emulator latencies in ms")
    parser.add_argument("--naive-seconds", type=float, default=NAIVE_SECONDS)
    parser.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    parser.add_argument("--quick", action="store_true", help="a small smoke run (20,000)")
    parser.add_argument(
        "--format",
        choices=("json", "avro", "protobuf", "json_schema"),
        default="json",
        help="also bill the records encoded in this Schema Registry format (a row of its own)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.records = min(args.records, 20_000)
        args.naive_seconds = min(args.naive_seconds, 5.0)
    latencies = [float(x) for x in args.latencies.split(",") if x.strip()]

    from meterstream_local import samples
    from meterstream_local.emulator.client import EmulatorProcess
    from meterstream_local.localkafka import cluster, create_topics, produce_all

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "records": args.records,
        "partitions": args.partitions,
        "runs": [],
    }
    with contextlib.ExitStack() as stack:
        bootstrap = stack.enter_context(cluster())
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, {topic: args.partitions, f"{topic}.dlq": 1})
        _say(f"producing {args.records:,} records to {topic} ({args.partitions} partitions)")
        generated = samples.generate(args.records, bad_every=0, customers=200)
        produce_all(bootstrap, topic, ((key, value) for key, value, _ in generated))
        encoded = None
        if args.format != "json":
            encoded = _encoded_topic(stack, bootstrap, args)

        ceiling = _ceiling(bootstrap, topic, args.records)
        _say(f"ceiling: {ceiling['events_per_second']:,.0f} records/s")
        for latency in latencies:
            knobs = samples.emulator_meter_args()  # the meter preflight finds them
            if latency:
                knobs += ["--latency-ms", str(latency)]
            with EmulatorProcess(knobs) as emulator:
                row: dict[str, Any] = {"latency_ms": latency, "ceiling": ceiling}
                with emulator.client() as control:
                    row["naive"] = _naive(
                        bootstrap, topic, args.records, emulator.base_url, args.naive_seconds
                    )
                    _say(f"[{latency:g} ms] naive: {row['naive']['events_per_second']:,.0f} ev/s")
                    for workers in (1, 2):
                        control.reset()
                        run = _meterstream(bootstrap, topic, emulator.base_url, args, workers)
                        events = control.stats()["events"]
                        _verify(run, events, args.records, f"--workers {workers}")
                        row[f"meterstream_workers_{workers}"] = run
                        _say(
                            f"[{latency:g} ms] meterstream --workers {workers}: "
                            f"{run['events_per_second']:,.0f} ev/s, "
                            f"{run['cpu_seconds_per_million']:.1f} CPU s/M, "
                            f"peak RSS {run['peak_rss_mb']:.0f} MB, "
                            f"start-up {run.get('start_up_seconds', 0):.1f} s"
                        )
                    if encoded is not None:
                        control.reset()
                        encoded_topic, extra = encoded
                        run = _meterstream(
                            bootstrap, encoded_topic, emulator.base_url, args, 1, extra
                        )
                        _verify(run, control.stats()["events"], args.records, args.format)
                        run["format"] = args.format
                        row["meterstream_registry"] = run
                        _say(
                            f"[{latency:g} ms] meterstream, {args.format} records: "
                            f"{run['events_per_second']:,.0f} ev/s, "
                            f"{run['cpu_seconds_per_million']:.1f} CPU s/M"
                        )
                base = row["meterstream_workers_1"]["events_per_second"]
                row["ratios"] = {
                    "meterstream_over_naive": base / row["naive"]["events_per_second"],
                    "meterstream_over_ceiling": base / ceiling["events_per_second"],
                    "workers_2_over_1": row["meterstream_workers_2"]["events_per_second"] / base,
                }
                results["runs"].append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists():  # keep what other benchmarks wrote there (e.g. "adaptive")
        for key, value in orjson.loads(args.out.read_bytes()).items():
            results.setdefault(key, value)
    args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    chart = args.out.with_suffix(".png")
    draw(results, chart)
    _table(results)
    _say(f"wrote {args.out} and {chart}")
    return 0


def _encoded_topic(
    stack: contextlib.ExitStack, bootstrap: str, args: argparse.Namespace
) -> tuple[str, dict[str, Any]]:
    """A second topic with the same records in ``args.format``; the config keys to read it."""
    from meterstream_local import samples
    from meterstream_local.localkafka import create_topics, produce_all
    from meterstream_local.registry import registry
    from meterstream_local.registry.encode import REGISTRY_MAPPING, UsageEncoder

    url = stack.enter_context(registry())
    topic = f"bench-{args.format}-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, {topic: args.partitions, f"{topic}.dlq": 1})
    _say(f"producing the same records as {args.format} to {topic} (registry {url})")
    with UsageEncoder(url, args.format, topic) as encoder:
        generated = samples.generate(args.records, bad_every=0, customers=200)
        produce_all(
            bootstrap, topic, ((key, encoder.encode_json(value)) for key, value, _ in generated)
        )
    extra = {
        "records": {"format": args.format},
        "schema_registry": {"url": url},
        "mapping": dict(REGISTRY_MAPPING),
    }
    return topic, extra


def _verify(run: dict[str, Any], events: dict[str, Any], records: int, what: str) -> None:
    """Time the run over its billing span; refuse to report it unless it billed every record.

    Timed like the ceiling, from the first record through: the rate over the billing span;
    start-up (imports, group join) apart.
    """
    accepted = events["accepted"]
    run["verified"] = accepted == records
    span = events["accepting_seconds"]
    if span > 0:
        run["start_up_seconds"] = run["seconds"] - span
        run["seconds"] = span
        run["events_per_second"] = records / span
    if not run["verified"]:
        raise SystemExit(
            f"meterstream ({what}) billed {accepted:,} of {records:,}: refusing to report a "
            "wrong run"
        )


def _ceiling(bootstrap: str, topic: str, records: int) -> dict[str, Any]:
    figures = _child_json([sys.executable, "-m", "bench.ceiling", bootstrap, topic, str(records)])
    figures["events_per_second"] = figures["records"] / figures["seconds"]
    figures["cpu_seconds_per_million"] = 1e6 * figures["cpu_seconds"] / figures["records"]
    return figures


def _naive(bootstrap: str, topic: str, records: int, url: str, seconds: float) -> dict[str, Any]:
    figures = _child_json(
        [sys.executable, "-m", "bench.naive", bootstrap, topic, str(records), url, str(seconds)]
    )
    figures["events_per_second"] = figures["events"] / figures["seconds"]
    figures["cpu_seconds_per_million"] = 1e6 * figures["cpu_seconds"] / max(figures["events"], 1)
    return figures


def _child_json(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return result


def _meterstream(
    bootstrap: str,
    topic: str,
    url: str,
    args: argparse.Namespace,
    workers: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    port = _free_port()
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"bench-meterstream-{uuid.uuid4().hex[:8]}",
            "topics": [topic],
            "dead_letter_topic": f"{topic}.dlq",
        },
        "stripe": {"api_base": url, "meter_events_base": url},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": port},
        "logging": {"level": "WARNING"},
        **(extra or {}),
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        path = Path(scratch) / "meterstream.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "connector", "run", "--config", str(path)]
        command += ["--until-idle", str(IDLE_SECONDS), "--workers", str(workers)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        process = subprocess.Popen(command, env={**os.environ, "STRIPE_API_KEY": API_KEY})
        root = psutil.Process(process.pid)
        peak_total = peak_single = 0.0
        histogram: dict[str, float] = {}
        last_scrape = 0.0
        done_at: float | None = None
        control = httpx.Client(base_url=url, timeout=5)
        while process.poll() is None:
            total, largest = tree_rss_mb(root)
            peak_total, peak_single = max(peak_total, total), max(peak_single, largest)
            now = time.monotonic()
            if now - last_scrape > 0.5:
                last_scrape = now
                histogram = _scrape_histogram(port) or histogram
                if done_at is None:
                    stats = control.get("/_emulator/stats").json()
                    if stats["events"]["accepted"] >= args.records:
                        done_at = time.monotonic()
            time.sleep(SAMPLE_EVERY_SECONDS)
        control.close()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if process.returncode != 0:
            raise SystemExit(f"meterstream exited {process.returncode}")
    elapsed = (done_at or time.monotonic()) - started
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    p50, p99 = _percentile(histogram, 0.5), _percentile(histogram, 0.99)
    return {
        "workers": workers,
        "seconds": elapsed,
        "events_per_second": args.records / elapsed,
        "cpu_seconds": cpu,
        "cpu_seconds_per_million": 1e6 * cpu / args.records,
        "peak_rss_mb": peak_total,
        "peak_rss_mb_largest_process": peak_single,
        "p50_ms": None if p50 is None else 1000 * p50,
        "p99_ms": None if p99 is None else 1000 * p99,
    }


def _scrape_histogram(port: int) -> dict[str, float]:
    """Cumulative bucket counts of successful requests: {upper bound: count}."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return {}
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if (
            line.startswith("meterstream_request_duration_seconds_bucket")
            and 'outcome="ok"' in line
        ):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def _percentile(buckets: dict[str, float], q: float) -> float | None:
    """Prometheus-style histogram_quantile (linear within the bucket)."""
    if not buckets:
        return None
    ordered = sorted((float(b), c) for b, c in buckets.items())
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / max(count - lower_count, 1e-9)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return ordered[-1][0]


def tree_rss_mb(root: psutil.Process) -> tuple[float, float]:
    """RSS in MB of ``root`` with its children: (all together, the largest process).

    Sampled while it runs: ``wait4``'s ``ru_maxrss`` for a child forked from a benchmark is
    the benchmark's own high-water mark, not the child's."""
    total = largest = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            rss = proc.memory_info().rss / 2**20
        except psutil.Error:  # it exited meanwhile
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _table(results: dict[str, Any]) -> None:
    print(f"\n{results['records']:,} records, {results['partitions']} partitions")
    print(results["machine"])
    header = ("latency", "mode", "events/s", "CPU s/M", "RSS MB", "p50 ms", "p99 ms")
    print("{:>8} {:<22} {:>10} {:>8} {:>7} {:>7} {:>7}".format(*header))
    for row in results["runs"]:
        for name in (
            "ceiling",
            "naive",
            "meterstream_workers_1",
            "meterstream_workers_2",
            "meterstream_registry",
        ):
            figures = row.get(name)
            if figures is None:
                continue
            label = f"meterstream {figures['format']}" if "format" in figures else name
            print(
                f"{row['latency_ms']:>6g}ms {label:<22} {figures['events_per_second']:>10,.0f} "
                f"{figures['cpu_seconds_per_million']:>8.1f} "
                f"{_fmt(figures.get('peak_rss_mb'), '7.0f')} {_fmt(figures.get('p50_ms'), '7.1f')} "
                f"{_fmt(figures.get('p99_ms'), '7.1f')}"
            )
        ratios = row["ratios"]
        print(
            f"{'':>8} meterstream/naive {ratios['meterstream_over_naive']:.1f}x, "
            f"meterstream/ceiling {ratios['meterstream_over_ceiling']:.2f}x, "
            f"workers 2/1 {ratios['workers_2_over_1']:.2f}x"
        )


def _fmt(value: float | None, spec: str) -> str:
    width = int(spec.split(".", maxsplit=1)[0])
    return f"{'-':>{width}}" if value is None else format(value, spec)


def _say(text: str) -> None:
    print(f"bench: {text}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
