"""bench.summary: each target against the figure measured for it, from the result files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import chart, summary


def _latest(cpu: float, ratio: float, p99: float, share: float) -> dict[str, Any]:
    return {
        "date": "2026-12-03 18:00 UTC",
        "machine": "x86_64, 2 cores",
        "records": 1000,
        "partitions": 8,
        "runs": [
            {
                "latency_ms": 0.0,
                "ceiling": {"events_per_second": 100_000.0, "cpu_seconds_per_million": 2.0},
                "naive": {"events_per_second": 10_000.0, "cpu_seconds_per_million": 20.0},
                "meterstream_workers_1": {
                    "events_per_second": 100_000.0 * ratio,
                    "cpu_seconds_per_million": cpu,
                },
                "meterstream_workers_2": {
                    "events_per_second": 100_000.0 * ratio,
                    "cpu_seconds_per_million": cpu + 1,
                },
                "ratios": {"meterstream_over_ceiling": ratio},
            }
        ],
        "freshness": {
            "rate": 5000.0,
            "runs": [{"linger_ms": 0, "p50_ms": 10.0, "p99_ms": p99, "target_p99_ms": 57.0}],
        },
        "adaptive": {
            "runs": [
                {
                    "adaptive": True,
                    "kill": False,
                    "fraction_of_limit_after_10s": share,
                    "refused_share_after_10s": 0.01,
                },
                {
                    "adaptive": False,
                    "kill": False,
                    "fraction_of_limit_after_10s": 0.5,
                    "refused_share_after_10s": 0.6,
                },
            ]
        },
    }


def test_each_target_is_judged_by_its_figure() -> None:
    rows = summary.rows(_latest(cpu=6.5, ratio=0.5, p99=80.0, share=0.93), None)
    verdicts = {what: verdict for what, _target, _measured, verdict in rows}
    assert verdicts == {
        "CPU per million events, one process, 0 ms": "met",
        "events/s against consume + decode, 0 ms": "**missed**",
        "freshness p99, linger 0 ms, 5,000 records/s": "**missed**",
        "adaptive concurrency, 4 processes, from 10 s": "met",  # the fixed run is no target
    }


def test_aggregation_needs_the_ceiling_only_for_300_s_buckets() -> None:
    aggregation = {
        "aggregation": {
            "runs": [
                {
                    "bucket_seconds": 60,
                    "over_account_limit": 21.0,
                    "events_per_record": 0.04,
                    "over_ceiling": 0.1,
                },
                {
                    "bucket_seconds": 300,
                    "over_account_limit": 35.0,
                    "events_per_record": 0.01,
                    "over_ceiling": 0.4,
                },
            ]
        }
    }
    rows = summary.rows({"runs": []}, aggregation)
    assert [verdict for *_, verdict in rows] == ["met", "**missed**"]
    assert "0.40x ceiling" in rows[1][2]


def test_the_summary_and_the_chart_read_the_files_make_bench_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "latest.json").write_bytes(orjson.dumps(_latest(9.0, 0.3, 40.0, 0.8)))
    assert summary.main(["--results", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert (
        "| CPU per million events, one process, 0 ms | <= 7 CPU-s | 9.0 CPU-s | **missed** |"
        in table
    )
    assert chart.main([str(tmp_path / "latest.json")]) == 0
    assert (tmp_path / "latest.png").stat().st_size > 10_000


def test_no_results_is_said_plainly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert summary.main(["--results", str(tmp_path)]) == 2
    assert "run `make bench` first" in capsys.readouterr().err
