"""Where one connector process spends its CPU: ``python -m bench.profile`` (``make profile``).

The same world as ``bench.run`` (a broker of its own, a pre-produced topic of canonical
records, the emulator in its own process with no added latency), then ``meterstream run
--until-idle`` under cProfile. Writes the top functions by own time and by cumulative time
to ``bench/results/profile.txt``. cProfile roughly doubles the run time; read the shares,
not the absolute seconds.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from meterstream_local import samples
from meterstream_local.emulator.client import EmulatorProcess
from meterstream_local.localkafka import cluster, create_topics, produce_all

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "profile.txt"
API_KEY = "sk_test_profile"
#: Lines of each pstats listing.
TOP = 30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--records", type=int, default=200_000, help="default 200,000")
    parser.add_argument("--partitions", type=int, default=8, help="default 8")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the text goes")
    args = parser.parse_args(argv)

    with cluster() as bootstrap, tempfile.TemporaryDirectory(prefix="profile-") as scratch:
        topic = f"profile-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, {topic: args.partitions, f"{topic}.dlq": 1})
        generated = samples.generate(args.records, bad_every=0, customers=200)
        produce_all(bootstrap, topic, ((key, value) for key, value, _ in generated))

        meters = samples.emulator_meter_args()  # the meter preflight finds them
        with EmulatorProcess(meters) as emulator, emulator.client() as control:
            config = {
                "kafka": {
                    "bootstrap_servers": bootstrap,
                    "group_id": f"profile-{uuid.uuid4().hex[:8]}",
                    "topics": [topic],
                    "dead_letter_topic": f"{topic}.dlq",
                },
                "stripe": {"api_base": emulator.base_url, "meter_events_base": emulator.base_url},
                # No metrics server: its port could be taken, and it is not what is profiled.
                "metrics": {"enabled": False},
                "logging": {"level": "WARNING"},
            }
            path = Path(scratch) / "meterstream.yaml"
            path.write_text(yaml.safe_dump(config))
            stats_path = Path(scratch) / "run.prof"
            command = [sys.executable, "-m", "cProfile", "-o", str(stats_path)]
            command += ["-m", "connector", "run", "--config", str(path), "--until-idle", "1"]
            started = time.monotonic()
            subprocess.run(command, env={**os.environ, "STRIPE_API_KEY": API_KEY}, check=True)
            elapsed = time.monotonic() - started
            accepted = control.stats()["events"]["accepted"]
            if accepted != args.records:
                raise SystemExit(f"billed {accepted:,} of {args.records:,}: not a valid profile")
        text = _report(stats_path, args, elapsed)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    print(f"written to {args.output}")
    return 0


def _report(stats_path: Path, args: argparse.Namespace, elapsed: float) -> str:
    out = io.StringIO()
    out.write(
        f"meterstream run --until-idle 1 under cProfile: {args.records:,} records, "
        f"{args.partitions} partitions, emulator with no added latency\n"
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; wall time {elapsed:.1f} s "
        "(profiled, about 2x slower than unprofiled)\n\n"
    )
    for order, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        out.write(f"== top {TOP} by {title} ==\n")
        stats = pstats.Stats(str(stats_path), stream=out)
        stats.strip_dirs().sort_stats(order).print_stats(TOP)
    return out.getvalue()


if __name__ == "__main__":
    sys.exit(main())
