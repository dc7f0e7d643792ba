"""Replay logic without Kafka or HTTP: which letters a run takes, the event a fanned-out
letter names, and the report's table and summary."""

from __future__ import annotations

import argparse

import pytest

from connector.dlq import LetterOrigin
from connector.errors import ConfigError, RecordError
from connector.mapping import MeterEventBody
from connector.replay import DEFAULT_REASONS, Selection, _named, parse_time, selection_from
from connector.replay_report import Report

T0 = "2026-12-01T00:00:00Z"
T0_MS = 1796083200000


def flags(**values: object) -> argparse.Namespace:
    defaults: dict[str, object] = {"reason": None, "since": None, "until": None, "timeout": 300.0}
    return argparse.Namespace(**{**defaults, **values})


def test_by_default_the_reasons_a_fix_elsewhere_can_cure_are_selected() -> None:
    selection = selection_from(flags())
    assert selection.reasons == frozenset(DEFAULT_REASONS)
    assert selection.selects("mapping_error", 1)
    assert not selection.selects("invalid_json", 1)
    assert not selection.after_until(2**62)


def test_since_is_inclusive_and_until_stops_only_after_it() -> None:
    selection = selection_from(flags(reason=["invalid_value"], since=T0, until=T0))
    assert selection == Selection(frozenset({"invalid_value"}), T0_MS, T0_MS)
    assert selection.selects("invalid_value", T0_MS)
    assert not selection.selects("invalid_value", T0_MS - 1)
    assert not selection.selects("mapping_error", T0_MS)
    assert not selection.after_until(T0_MS)
    assert selection.after_until(T0_MS + 1)


def test_a_retired_reason_can_still_be_replayed() -> None:
    assert selection_from(flags(reason=["session_expired"])).selects("session_expired", 0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"reason": ["nope"]}, r"--reason: unknown reason 'nope'; one of invalid_json, "),
        ({"since": "yesterday"}, r"--since: 'yesterday' is not an RFC 3339 time"),
        ({"since": T0, "until": "2026-11-30T23:59:59Z"}, r"--until: must not be before --since"),
        ({"timeout": 0.0}, r"--timeout: must be more than 0 seconds"),
    ],
)
def test_a_bad_flag_is_named(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        selection_from(flags(**values))


def test_times_with_an_offset_are_the_same_instant() -> None:
    assert parse_time("2026-12-01T01:00:00+01:00", "--since") == T0_MS


def origin(event_name: str | None) -> LetterOrigin:
    return LetterOrigin("usage", 0, 5, "", 0, "rejected_by_stripe", event_name, [])


def event(name: str) -> MeterEventBody:
    return {"event_name": name, "identifier": f"r#{name}", "timestamp": "", "payload": {}}


def test_a_fanned_out_letter_replays_only_the_event_it_names() -> None:
    both = [event("input_tokens"), event("output_tokens")]
    assert _named(both, origin("output_tokens")) == [both[1]]
    assert _named(both, origin(None)) == both, "a letter about the whole record: every event"
    single = [event("api_requests")]
    assert _named(single, origin("renamed")) == single, "one event is the record"
    with pytest.raises(RecordError, match="no longer produces") as refused:
        _named(both, origin("cached_tokens"))
    assert refused.value.reason == "mapping_error"


def test_the_report_shows_each_reason_the_failures_and_a_summary() -> None:
    report = Report("usage.dlq", "meterstream.replay", dry_run=False)
    report.counts("mapping_error").read = 5
    report.counts("mapping_error").billed = 3
    report.failed("mapping_error", "no_active_meter", "no meter has event name 'x'")
    report.failed("mapping_error", "no_active_meter", "ignored: one example per reason")
    report.counts("invalid_json").read = 2
    report.counts("invalid_json").skipped = 2
    report.finished = True
    report.stopped_by_until = 2

    assert report.lines() == [
        "REASON         READ  SKIPPED  BILLED  DEAD-LETTERED AGAIN",
        "invalid_json      2        2       0                    0",
        "mapping_error     5        0       3                    2",
        "total             7        2       3                    2",
        "mapping_error: 2 dead-lettered again as no_active_meter, e.g. no meter has event name 'x'",
        "replayed 7 letters from usage.dlq as group meterstream.replay: 3 billed, 2 "
        "dead-lettered again, 2 skipped; committed; 2 partitions stopped at --until",
    ]


def test_an_unfinished_run_says_why_and_how_many_are_left() -> None:
    report = Report("usage.dlq", "meterstream.replay", dry_run=False)
    report.counts("rejected_by_stripe").read = 4
    report.counts("rejected_by_stripe").billed = 1
    report.problem = "nothing moved for 3 s (--timeout): Stripe: HTTP 503."

    lines = report.lines()

    assert lines[0].split()[-1] == "UNFINISHED"
    assert lines[1].split() == ["rejected_by_stripe", "4", "0", "1", "0", "3"]
    assert lines[-1] == (
        "replay did not finish: nothing moved for 3 s (--timeout): Stripe: HTTP 503; 1 billed, "
        "0 dead-lettered again, 0 skipped, 3 left for the next run (committed up to the first "
        "of them)"
    )


def test_a_dry_run_speaks_in_the_conditional() -> None:
    report = Report("usage.dlq", "meterstream.replay", dry_run=True)
    report.counts("mapping_error").read = 1
    report.failed("mapping_error", "mapping_error", "customer is missing")
    report.finished = True

    lines = report.lines()

    assert lines[0].split()[3:] == ["WOULD", "BILL", "WOULD", "FAIL"]
    assert lines[3] == "mapping_error: 1 would fail as mapping_error, e.g. customer is missing"
    assert lines[-1].endswith(
        "0 would be billed, 1 would fail, 0 skipped; nothing sent, written or committed"
    )
