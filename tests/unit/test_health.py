"""Liveness and readiness verdicts, their status files, and the HTTP server over loopback."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from connector.config import MetricsConfig
from connector.errors import ConfigError
from connector.health import HealthServer, HealthState, read_status_files


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_live_and_ready_while_the_loop_beats_without_problems() -> None:
    clock = FakeClock()
    state = HealthState(max_heartbeat_age=5, clock=clock)
    state.beat()
    clock.now += 4
    report = state.report()
    assert report.live
    assert report.ready
    assert report.body["problems"] == {}


def test_a_stalled_loop_is_neither_live_nor_ready() -> None:
    clock = FakeClock()
    state = HealthState(max_heartbeat_age=5, clock=clock)
    state.beat()
    clock.now += 6
    report = state.report()
    assert not report.live
    assert not report.ready
    assert "no heartbeat" in report.body["problems"]["loop"]


def test_start_up_counts_as_heartbeat_age_until_the_first_beat() -> None:
    clock = FakeClock()
    state = HealthState(max_heartbeat_age=5, clock=clock)
    assert state.report().live
    clock.now += 10
    assert not state.report().live


def test_problems_make_it_not_ready_but_still_live_and_clear_again() -> None:
    state = HealthState(max_heartbeat_age=5, clock=FakeClock())
    state.beat()
    state.set_problem("dead_letter", "topic usage.dlq not writable: MSG_SIZE_TOO_LARGE")
    state.set_problem("stripe", "HTTP 401 from Stripe: invalid API key")
    report = state.report()
    assert report.live
    assert not report.ready
    assert set(report.body["problems"]) == {"dead_letter", "stripe"}
    state.set_problem("dead_letter", None)
    state.set_problem("stripe", None)
    assert state.report().ready


def test_status_files_combine_every_worker(tmp_path: Path) -> None:
    healthy = HealthState(max_heartbeat_age=5, status_file=tmp_path / "worker-0.json")
    troubled = HealthState(max_heartbeat_age=5, status_file=tmp_path / "worker-1.json")
    troubled.set_problem("kafka", "all brokers down")
    healthy.beat()
    troubled.beat()
    report = read_status_files(tmp_path, max_age=5)
    assert report.live
    assert not report.ready
    assert report.body["workers"]["worker-1"]["problems"] == {"kafka": "all brokers down"}
    assert report.body["workers"]["worker-0"]["problems"] == {}


def test_a_stale_status_file_means_not_live(tmp_path: Path) -> None:
    path = tmp_path / "worker-0.json"
    path.write_text(
        json.dumps({"pid": os.getpid(), "written_at": time.time() - 60, "problems": {}})
    )
    report = read_status_files(tmp_path, max_age=5)
    assert not report.live
    assert not report.ready


def test_no_status_file_yet_is_not_ready(tmp_path: Path) -> None:
    report = read_status_files(tmp_path, max_age=5)
    assert report.live
    assert not report.ready


def test_server_answers_probes_and_metrics_over_http() -> None:
    state = HealthState(max_heartbeat_age=5)
    state.beat()
    server = HealthServer(MetricsConfig(host="127.0.0.1", port=0), state.report)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/livez").status_code == 200
        assert httpx.get(f"{base}/readyz").json()["status"] == "ok"
        state.set_problem("stripe", "Stripe unreachable for 31 s")
        answer = httpx.get(f"{base}/readyz")
        assert answer.status_code == 503
        assert answer.json()["problems"] == {"stripe": "Stripe unreachable for 31 s"}
        assert httpx.get(f"{base}/livez").status_code == 200
        metrics = httpx.get(f"{base}/metrics")
        assert metrics.status_code == 200
        assert "meterstream_build_info" in metrics.text
        assert "meterstream_events_sent_total" in metrics.text
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.stop()


def test_a_taken_port_is_a_config_error_naming_the_key() -> None:
    state = HealthState(max_heartbeat_age=5)
    first = HealthServer(MetricsConfig(host="127.0.0.1", port=0), state.report)
    first.start()
    try:
        second = HealthServer(MetricsConfig(host="127.0.0.1", port=first.port), state.report)
        with pytest.raises(ConfigError, match=r"metrics\.port"):
            second.start()
    finally:
        first.stop()
