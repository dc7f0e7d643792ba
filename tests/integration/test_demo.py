"""``meterstream demo``, the README's main job, end to end on the session's broker."""

from __future__ import annotations

import pytest

from tests.integration.harness import run_meterstream

pytestmark = pytest.mark.integration


def test_demo_bills_every_good_record_and_dead_letters_every_bad_one(kafka_bootstrap: str) -> None:
    result = run_meterstream(
        "demo",
        "--records",
        "1500",
        "--bad-every",
        "25",
        env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "COLUMNS": "120"},
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "every record billed exactly once or dead-lettered" in out
    assert "records produced: 1,500" in out
    assert "dead-lettered: 60" in out
    for meter in ("api_requests", "llm_tokens", "storage_gb_hours"):
        assert meter in out
    assert "✗" not in out


def test_demo_refuses_nonsense_flags() -> None:
    result = run_meterstream("demo", "--records", "0")
    assert result.returncode == 2
    assert "--records" in result.stderr
