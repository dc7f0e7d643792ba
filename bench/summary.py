"""The benchmark's figures against the targets they answer: ``python -m bench.summary``.

``make bench`` runs four benchmarks, each writing its own part of
``bench/results/latest.json`` (throughput, ``freshness``, ``adaptive``) or
``bench/results/aggregation.json``. This reads them back and prints one Markdown table:
each target, the figure measured for it, and whether it was met, so the README's summary
is copied from the files rather than typed. A figure that was not measured is shown as
such, never guessed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

RESULTS = Path("bench/results")

#: Targets (docs/performance.md, docs/freshness.md, docs/concurrency.md, docs/aggregation.md).
CPU_PER_MILLION_MAX = 7.0
CEILING_RATIO_MIN = 0.7
ADAPTIVE_SHARE_MIN = 0.90
ADAPTIVE_REFUSED_MAX = 0.03
AGGREGATION_LIMIT_RATIO_MIN = 20.0
AGGREGATION_EVENTS_PER_RECORD_MAX = 0.05
AGGREGATION_CEILING_RATIO_MIN = 0.5

Row = tuple[str, str, str, str]


def rows(latest: dict[str, Any], aggregation: dict[str, Any] | None) -> list[Row]:
    """(what, target, measured, verdict) for every target the files have figures for."""
    return [
        *_throughput(latest),
        *_freshness(latest.get("freshness")),
        *_adaptive(latest.get("adaptive")),
        *_aggregation(aggregation),
    ]


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def _throughput(latest: dict[str, Any]) -> Iterator[Row]:
    for run in latest.get("runs", []):
        if run.get("latency_ms") != 0:
            continue
        one = run.get("meterstream_workers_1")
        if not one:
            continue
        cpu = one["cpu_seconds_per_million"]
        yield (
            "CPU per million events, one process, 0 ms",
            f"<= {CPU_PER_MILLION_MAX:g} CPU-s",
            f"{cpu:.1f} CPU-s",
            _verdict(cpu <= CPU_PER_MILLION_MAX),
        )
        ratio = run["ratios"]["meterstream_over_ceiling"]
        yield (
            "events/s against consume + decode, 0 ms",
            f">= {CEILING_RATIO_MIN:g}x",
            f"{ratio:.2f}x ({one['events_per_second']:,.0f} of "
            f"{run['ceiling']['events_per_second']:,.0f}/s)",
            _verdict(ratio >= CEILING_RATIO_MIN),
        )


def _freshness(freshness: dict[str, Any] | None) -> Iterator[Row]:
    for run in (freshness or {}).get("runs", []):
        target = run["target_p99_ms"]
        yield (
            f"freshness p99, linger {run['linger_ms']} ms, {freshness['rate']:,.0f} records/s",  # type: ignore[index]
            f"<= {target:.0f} ms",
            f"{run['p99_ms']:.0f} ms (p50 {run['p50_ms']:.0f} ms)",
            _verdict(run["p99_ms"] <= target),
        )


def _adaptive(adaptive: dict[str, Any] | None) -> Iterator[Row]:
    for run in (adaptive or {}).get("runs", []):
        if not run.get("adaptive"):
            continue  # the fixed-concurrency runs are the comparison, not a target
        share = run.get("fraction_of_limit_after_10s")
        refused = run.get("refused_share_after_10s")
        if share is None or refused is None:
            continue
        what = "adaptive concurrency, 4 processes, from 10 s"
        if run.get("kill"):
            what += ", one killed and restarted"
        yield (
            what,
            f">= {ADAPTIVE_SHARE_MIN:.0%} of R, <= {ADAPTIVE_REFUSED_MAX:.0%} refused",
            f"{share:.1%} of R, {refused:.1%} refused",
            _verdict(share >= ADAPTIVE_SHARE_MIN and refused <= ADAPTIVE_REFUSED_MAX),
        )


def _aggregation(aggregation: dict[str, Any] | None) -> Iterator[Row]:
    for run in (aggregation or {}).get("aggregation", {}).get("runs", []):
        limit_ratio = run.get("over_account_limit")
        per_record = run.get("events_per_record")
        ceiling_ratio = run.get("over_ceiling")
        if limit_ratio is None or per_record is None:
            continue
        bucket = run.get("bucket_seconds")
        met = limit_ratio >= AGGREGATION_LIMIT_RATIO_MIN
        met = met and per_record <= AGGREGATION_EVENTS_PER_RECORD_MAX
        target = f">= {AGGREGATION_LIMIT_RATIO_MIN:g}x limit, <= 5 % events/record"
        measured = f"{limit_ratio:.1f}x, {per_record:.2%}"
        if bucket == 300:
            target += f", >= {AGGREGATION_CEILING_RATIO_MIN:g}x ceiling"
            met = met and ceiling_ratio is not None
            met = met and ceiling_ratio >= AGGREGATION_CEILING_RATIO_MIN
        if ceiling_ratio is not None:
            measured += f", {ceiling_ratio:.2f}x ceiling"
        yield (f"aggregation, {bucket} s buckets", target, measured, _verdict(met))


def markdown(table: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| what | target | measured | |", "|---|---|---|---|"]
    lines += [
        f"| {what} | {target} | {measured} | {verdict} |"
        for what, target, measured, verdict in table
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.summary", description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS, help="default bench/results")
    args = parser.parse_args(argv)
    latest_path = args.results / "latest.json"
    if not latest_path.exists():
        print(f"no {latest_path}: run `make bench` first", file=sys.stderr)
        return 2
    latest = orjson.loads(latest_path.read_bytes())
    aggregation_path = args.results / "aggregation.json"
    aggregation = orjson.loads(aggregation_path.read_bytes()) if aggregation_path.exists() else None
    print(markdown(rows(latest, aggregation)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
