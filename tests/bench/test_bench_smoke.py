"""The benchmark pipeline end to end on a tiny topic: every figure is produced and checked.

Timings are not asserted (speed lives in the benchmark's own report); what is asserted is
that each mode ran, that meterstream's runs were verified against the emulator's totals,
and that the JSON and the chart were written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import REPO

pytestmark = pytest.mark.integration


def run_bench(kafka_bootstrap: str, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` against the session broker; fails with its output tail."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_quick_benchmark_writes_every_figure(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    done = run_bench(
        kafka_bootstrap,
        "bench.run",
        *("--quick", "--records", "3000", "--latencies", "0,5"),
        *("--naive-seconds", "2", "--out", str(out)),
    )
    results = json.loads(out.read_text())
    assert results["records"] == 3000
    assert [row["latency_ms"] for row in results["runs"]] == [0.0, 5.0]
    for row in results["runs"]:
        assert row["ceiling"]["records"] == 3000
        assert row["naive"]["events"] > 0
        for workers in (1, 2):
            run = row[f"meterstream_workers_{workers}"]
            assert run["verified"] is True
            assert run["events_per_second"] > 0
            assert run["cpu_seconds_per_million"] > 0
            assert run["peak_rss_mb"] > 0
            assert run["p50_ms"] is not None
            assert run["p99_ms"] >= run["p50_ms"]
        assert set(row["ratios"]) == {
            "meterstream_over_naive",
            "meterstream_over_ceiling",
            "workers_2_over_1",
        }
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "meterstream/naive" in done.stdout


def test_profile_writes_both_listings(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "profile.txt"
    run_bench(kafka_bootstrap, "bench.profile", "--records", "2000", "--output", str(out))
    text = out.read_text()
    assert "2,000 records" in text
    assert "top 30 by own time" in text
    assert "top 30 by cumulative time" in text
    # The connector's own hot path is in the listing, so the profile profiled the connector.
    assert "_ingest" in text


def test_quick_aggregation_benchmark_verifies_and_writes_its_figures(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    out = tmp_path / "latest.json"
    out.write_text(json.dumps({"records": 1}))  # what bench.run wrote stays
    run_bench(
        kafka_bootstrap,
        "bench.aggregation",
        *("--quick", "--records", "3000", "--customers", "12", "--minutes", "15"),
        *("--buckets", "300", "--no-kills", "--out", str(out)),
    )
    results = json.loads(out.read_text())
    assert results["records"] == 1
    figures = results["aggregation"]
    [run] = figures["runs"]
    assert run["verified"] is True
    assert run["bucket_seconds"] == 300
    # 12 customers x 3 buckets of sum, a gauge, a few count records: far fewer events.
    assert 0 < run["events_per_record"] < 0.2
    assert run["records_per_second"] > 0
    assert figures["ceiling_records_per_second"] > 0


def test_freshness_writes_its_figures_beside_the_others(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A steady stream for two seconds: the lag percentiles, the round trip measured in the
    same run, the target, the histogram and its chart; other keys of the file are kept."""
    out = tmp_path / "latest.json"
    out.write_text(json.dumps({"adaptive": {"kept": True}}))
    done = run_bench(
        kafka_bootstrap,
        "bench.freshness",
        *("--rate", "300", "--seconds", "2", "--lingers", "20", "--out", str(out)),
    )
    results = json.loads(out.read_text())
    assert results["adaptive"] == {"kept": True}
    (run,) = results["freshness"]["runs"]
    assert run["linger_ms"] == 20
    assert run["verified"] is True
    assert run["records"] >= 500  # 300/s for 2 s, give or take the last tick
    assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
    assert run["round_trip_mean_ms"] > 0
    assert run["target_p99_ms"] == pytest.approx(20 + 3 * run["round_trip_mean_ms"] + 50)
    assert run["histogram"][-1] == {"le": "+Inf", "count": run["events_measured"]}
    assert (tmp_path / "freshness.png").stat().st_size > 10_000
    assert "record -> accepted p50" in done.stdout
    # Kafka's own share, from a bare consumer beside the connector: the steady records.
    kafka = run["kafka_only"]
    assert 0 < kafka["records"] <= run["records"]
    assert 0 < kafka["p50_ms"] <= kafka["p99_ms"] <= kafka["max_ms"]
