"""bench.hotpath measures the real ingest and sent-batch code, and says so in one line."""

from __future__ import annotations

import re

import pytest

from bench import hotpath


def test_hotpath_reports_cpu_per_record_for_ingest_and_sent_batches(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # --default-gc: the worker's collector settings would outlive the call in this process.
    args = ["--records", "2000", "--repeat", "2", "--poll", "500", "--default-gc"]
    assert hotpath.main(args) == 0
    line = capsys.readouterr().out.strip()
    found = re.fullmatch(
        r"2,000 records, best of 2: ([\d.]+) us CPU per record "
        r"\(ingest ([\d.]+), sent batches ([\d.]+)\)",
        line,
    )
    assert found, line
    total, ingest, sent = (float(x) for x in found.groups())
    assert ingest > 0
    assert sent > 0
    assert total == pytest.approx(ingest + sent, abs=0.02)
