"""Acceptance stamps: how old each event was when the emulator accepted it."""

from __future__ import annotations

import time

import httpx

from meterstream_local.emulator import EmulatorClient, EmulatorServer, EmulatorState

from .support import event, new_token, send

T0 = 1_800_000_000.0


def test_lags_give_percentiles_max_and_a_cumulative_histogram() -> None:
    state = EmulatorState(now=T0)
    lags = [0.01 * i - 0.005 for i in range(1, 101)]  # 0.005 .. 0.995 s, off bucket edges
    state.accept([("usage", "cus_1", 1, T0 - lag, f"id-{i}") for i, lag in enumerate(lags)], T0)
    state.accept([("usage", "cus_1", 1, T0 - 0.5, "id-0")], T0)  # a duplicate: not counted

    report = state.freshness()

    assert report["events"] == 100
    assert report["requests"] == 1
    seconds = report["seconds"]
    assert abs(seconds["p50"] - 0.495) < 1e-6  # epoch floats: microsecond precision
    assert abs(seconds["p99"] - 0.985) < 1e-6
    assert abs(seconds["max"] - 0.995) < 1e-6
    buckets = {b["le"]: b["count"] for b in report["histogram"]}
    assert buckets[0.1] == 10
    assert buckets[0.5] == 50
    assert buckets[1] == 100
    assert buckets["+Inf"] == 100


def test_over_http_since_a_reset(emulator: EmulatorServer, http: httpx.Client) -> None:
    token = new_token(http)
    send(http, token, [event(timestamp=time.time() - 3600)])  # before the reset: not counted
    with EmulatorClient(emulator.base_url) as control:
        control.reset_freshness()
        sent_at = time.time()
        send(http, token, [event(timestamp=sent_at - 120), event(timestamp=sent_at - 60)])
        send(http, token, [event()])  # no timestamp: "now", lag 0

        report = control.freshness()

    assert report["events"] == 3
    assert report["requests"] == 2
    assert 120 <= report["seconds"]["max"] < 120 + 30
    assert 60 <= report["seconds"]["p50"] < 60 + 30
    assert report["seconds"]["min"] == 0
    assert report["accepted_monotonic"]["first"] <= report["accepted_monotonic"]["last"]
    assert emulator.freshness()["events"] == 3
    emulator.reset()
    assert emulator.freshness()["events"] == 0
    assert emulator.freshness()["seconds"]["p50"] is None
