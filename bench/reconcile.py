"""How long ``meterstream reconcile`` takes over a large topic, and how much memory.

``python -m bench.reconcile [--records 1000000]``: starts a broker (``cluster()``) and the
emulator (its own process), produces canonical sample usage (with a share of bad records,
so the dead-letter topic is not empty), bills it with ``meterstream run --until-idle``,
then times ``meterstream reconcile`` over the window that holds every record, sampling its
RSS. The run must match (exit 0), or nothing is reported. Writes
``bench/results/reconcile.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psutil
import yaml

API_KEY = "sk_test_bench"
HOUR = 3600
SAMPLE_EVERY_SECONDS = 0.1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench/results/reconcile.json"))
    args = parser.parse_args(argv)

    from meterstream_local import samples
    from meterstream_local.emulator.client import EmulatorProcess
    from meterstream_local.localkafka import cluster, create_topics, produce_all

    with cluster() as bootstrap, EmulatorProcess(samples.emulator_meter_args()) as emulator:
        topic = f"bench-reconcile-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, {topic: args.partitions, f"{topic}.dlq": 1})
        now = time.time()
        _say(f"producing {args.records:,} records to {topic} ({args.partitions} partitions)")
        generated = samples.generate(
            args.records, customers=args.customers, now=now, id_prefix=topic
        )
        produce_all(bootstrap, topic, ((key, value) for key, value, _ in generated))
        config = {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "group_id": f"{topic}-group",
                "topics": [topic],
                "dead_letter_topic": f"{topic}.dlq",
            },
            "stripe": {"api_base": emulator.base_url, "meter_events_base": emulator.base_url},
            "metrics": {"enabled": False},
            "logging": {"level": "WARNING"},
        }
        with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as scratch:
            path = Path(scratch) / "meterstream.yaml"
            path.write_text(yaml.safe_dump(config))
            env = {**os.environ, "STRIPE_API_KEY": API_KEY}
            _say("billing them: meterstream run --until-idle 2")
            started = time.monotonic()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "connector",
                    "run",
                    "--config",
                    str(path),
                    "--until-idle",
                    "2",
                ],
                env=env,
                check=True,
                timeout=3600,
            )
            billing_seconds = time.monotonic() - started
            start = int(now - HOUR) // HOUR * HOUR
            end = (int(now) // HOUR + 1) * HOUR
            report = Path(scratch) / "reconcile.json"
            command = [sys.executable, "-m", "connector", "reconcile", "--config", str(path)]
            command += ["--start", _iso(start), "--end", _iso(end), "--json", str(report)]
            _say(f"reconciling: {' '.join(command[3:])}")
            run = _measure(command, env)
            if run["exit_code"] != 0:
                raise SystemExit(f"reconcile exited {run['exit_code']}: refusing to report")
            result = orjson.loads(report.read_bytes())
    figures: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "records": args.records,
        "partitions": args.partitions,
        "billing_seconds": billing_seconds,
        "reconcile_seconds": run["seconds"],
        "records_per_second": result["kafka"]["records_read"] / run["seconds"],
        "peak_rss_mb": run["peak_rss_mb"],
        "pairs": result["pairs"],
        "kafka": {k: v for k, v in result["kafka"].items() if k != "partitions"},
        "summary": result["summary"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n")
    _say(
        f"reconcile: {run['seconds']:.1f} s for {result['kafka']['records_read']:,} records "
        f"({figures['records_per_second']:,.0f}/s), {result['pairs']} pairs, peak RSS "
        f"{run['peak_rss_mb']:.0f} MB; wrote {args.out}"
    )
    return 0


def _measure(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    watched = psutil.Process(process.pid)
    peak = 0.0
    while process.poll() is None:
        with contextlib.suppress(psutil.Error):  # it may exit between poll() and here
            peak = max(peak, watched.memory_info().rss / 2**20)
        time.sleep(SAMPLE_EVERY_SECONDS)
    return {
        "exit_code": process.returncode,
        "seconds": time.monotonic() - started,
        "peak_rss_mb": peak,
    }


def _iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
