"""Knobs: latency, scheduled and random failures, 429s, rate limits, outages, restarts."""

from __future__ import annotations

import time

import httpx
import pytest

from meterstream_local.emulator import EmulatorServer, FailureRule, KnobError, Knobs

from .support import API_KEY, SESSION, error_of, event, new_token, send


def test_latency_holds_each_request_in_scope(emulator: EmulatorServer, http: httpx.Client) -> None:
    token = new_token(http)
    emulator.configure(latency_ms=150, jitter_ms=20)

    started = time.monotonic()
    assert send(http, token, [event()]).status_code == 200
    held = time.monotonic() - started

    started = time.monotonic()
    http.get("/_emulator/stats")
    inspected = time.monotonic() - started
    assert held >= 0.150  # a lower bound: the knob's promise, never flaky
    assert inspected < held  # inspection endpoints are never delayed


def test_a_failure_schedule_counts_requests_from_when_it_is_set(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    token = new_token(http)
    send(http, token, [event()])
    emulator.configure(failures="2-3:500,5:503")

    responses = [send(http, token, [event()]) for _ in range(6)]

    assert [r.status_code for r in responses] == [200, 500, 500, 200, 503, 200]
    failed = responses[1]
    assert failed.headers["request-id"].startswith("req_")
    assert error_of(failed)["type"] == "api_error"
    assert emulator.state.events_accepted == 1 + 3  # failed requests accepted nothing
    assert emulator.stats()["faults_injected"] == {"scheduled": 3}
    assert emulator.stats()["requests"]["by_status"]["500"] == 2


def test_failures_apply_to_meter_event_endpoints_only(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    token = new_token(http)
    emulator.configure(error_rate=1.0)

    assert send(http, token, [event()]).status_code == 500
    assert http.post(SESSION).status_code == 500
    assert http.get("/v1/billing/meters").status_code == 200
    assert http.get("/_emulator/stats").status_code == 200

    emulator.configure(fault_scope="stream")
    assert http.post(SESSION).status_code == 200
    emulator.configure(fault_scope="all")
    assert http.get("/v1/billing/meters").status_code == 500
    assert http.get("/_emulator/stats").status_code == 200  # never


def test_error_rate_is_a_fraction(emulator: EmulatorServer, http: httpx.Client) -> None:
    token = new_token(http)
    emulator.configure(error_rate=0.5, seed=7)

    statuses = [send(http, token, [event()]).status_code for _ in range(60)]

    assert set(statuses) == {200, 500}
    assert 10 <= statuses.count(500) <= 50


def test_injected_429s_carry_retry_after(emulator: EmulatorServer, http: httpx.Client) -> None:
    token = new_token(http)
    emulator.configure(rate_limit_rate=1.0, retry_after_seconds=7)

    response = send(http, token, [event()])

    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert error_of(response)["type"] == "rate_limit"
    emulator.configure(failures=["1:429"], rate_limit_rate=0.0, retry_after_seconds=2)
    scheduled = send(http, token, [event()])
    assert scheduled.status_code == 429
    assert scheduled.headers["retry-after"] == "2"


def test_a_requests_per_second_limit_answers_429(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    token = new_token(http)
    emulator.configure(requests_per_second=5)

    responses = [send(http, token, [event()]) for _ in range(20)]

    statuses = [r.status_code for r in responses]
    assert statuses[:1] == [200]
    assert statuses.count(429) >= 5  # 20 quick requests span at most a few 1-second windows
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 429)
    assert emulator.state.events_accepted == statuses.count(200)


def test_an_events_per_second_limit_answers_429(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    token = new_token(http)
    emulator.configure(events_per_second=150)

    statuses = [send(http, token, [event() for _ in range(100)]).status_code for _ in range(4)]

    assert 429 in statuses
    assert emulator.state.events_accepted == 100 * statuses.count(200)


def test_the_outage_switch(emulator: EmulatorServer, http: httpx.Client) -> None:
    token = new_token(http)
    emulator.configure(outage=True)

    assert [send(http, token, [event()]).status_code for _ in range(3)] == [503] * 3
    assert http.post(SESSION).status_code == 503

    emulator.configure(outage=False)
    assert send(http, token, [event()]).status_code == 200


def test_knobs_over_http(emulator: EmulatorServer, http: httpx.Client) -> None:
    reply = http.post("/_emulator/configure", json={"outage": True, "latency_ms": 1})

    assert reply.status_code == 200
    assert reply.json()["knobs"]["outage"] is True
    assert emulator.knobs.outage is True
    assert http.get("/_emulator/knobs").json()["latency_ms"] == 1
    for bad in ({"outage": "yes"}, {"error_rate": 2}, {"colour": "red"}, {"failures": "x-y"}):
        response = http.post("/_emulator/configure", json=bad)
        assert response.status_code == 400, bad
    assert http.post("/_emulator/configure", content=b"[1]").status_code == 400


def test_reset_forgets_everything_and_restores_the_start_up_knobs(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    send(http, new_token(http), [event(identifier="x")])
    emulator.configure(latency_ms=5)

    assert http.post("/_emulator/reset", json={"keep_knobs": True}).status_code == 200
    assert emulator.knobs.latency_ms == 5
    assert not emulator.state.seen("x")
    http.post("/_emulator/reset")

    stats = http.get("/_emulator/stats").json()
    assert stats["knobs"] == Knobs().to_json()
    assert stats["events"]["accepted"] == 0
    assert stats["sessions"]["created"] == 0
    assert stats["requests"]["total"] == 0


def test_stats_report_what_was_accepted(emulator: EmulatorServer, http: httpx.Client) -> None:
    token = new_token(http)
    send(http, token, [event(3, identifier="a"), event(4, customer="cus_2", identifier="b")])
    send(http, token, [event(3, identifier="a")])
    send(http, token, [event(timestamp="yesterday")])
    emulator.configure(validation_delay_seconds=0)
    send(http, token, [event("x")])

    stats = http.get("/_emulator/stats").json()

    assert stats["requests"]["by_status"] == {"200": 4, "400": 1}
    assert stats["requests"]["by_endpoint"] == {"meter_event_session": 1, "meter_event_stream": 4}
    assert stats["events"]["accepted"] == 2
    assert stats["events"]["duplicates"] == 1
    assert stats["events"]["rejected_by_code"] == {"invalid_timestamp": 1}
    assert stats["events"]["dropped_by_code"] == {"meter_event_invalid_value": 1}
    assert stats["events"]["dropped"] == 1
    assert stats["sessions"]["created"] == 1
    assert stats["sessions"]["active"] == 1
    assert stats["meters"]["api_requests"]["customers"] == {
        "cus_1": {"sum": 3, "count": 1, "last": 3},
        "cus_2": {"sum": 4, "count": 1, "last": 4},
    }
    assert http.get("/_emulator/seen", params={"identifier": "a"}).json()["seen"] is True


def test_stats_time_the_span_from_first_to_last_accepted_event(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    def span() -> float:
        return float(http.get("/_emulator/stats").json()["events"]["accepting_seconds"])

    token = new_token(http)
    assert span() == 0.0
    send(http, token, [event(1, identifier="first")])
    assert span() == 0.0  # one accepting request: no span yet
    send(http, token, [event(1, identifier="first")])  # a duplicate accepts nothing new
    assert span() == 0.0
    send(http, token, [event(1, identifier="second")])
    after_two = span()
    assert after_two > 0
    send(http, token, [event("x")])  # refused: does not extend the span
    assert span() == after_two
    http.post("/_emulator/reset")
    assert span() == 0.0


def test_stop_and_start_keep_the_state_on_the_same_port() -> None:
    with EmulatorServer() as server:
        url = server.base_url
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            token = new_token(http)
            assert send(http, token, [event(5, identifier="before")]).status_code == 200

            server.stop()
            with pytest.raises(httpx.ConnectError):  # connection refused: Stripe unreachable
                send(http, token, [event()])
            server.start()

            assert server.base_url == url
            assert send(http, token, [event(5, identifier="before")]).status_code == 200
            assert send(http, token, [event(6, identifier="after")]).status_code == 200
        assert server.state.duplicates == 1
        assert server.state.totals()["api_requests"]["cus_1"]["sum"] == 11


def test_knob_values_are_validated() -> None:
    with pytest.raises(KnobError):
        Knobs(error_rate=1.5)
    with pytest.raises(KnobError):
        Knobs().replace(session_max_requests=0)
    with pytest.raises(KnobError):
        Knobs().replace(fault_scope="everywhere")
    with pytest.raises(KnobError):
        FailureRule.parse("10-5:500")
    assert FailureRule.parse("4") == FailureRule(4, 4, 503)
    assert Knobs().replace(failures="1-2:500, 9:429").failures == (
        FailureRule(1, 2, 500),
        FailureRule(9, 9, 429),
    )
    assert Knobs().replace(requests_per_second=None).requests_per_second is None
