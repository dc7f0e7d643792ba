"""Reconciliation logic without Kafka or HTTP: the window, each formula's Kafka figure, the
verdict per row, the order and shape of the report."""

from __future__ import annotations

import orjson
import pytest

from connector.errors import ConfigError
from connector.kafka_totals import KafkaTotals, Tally
from connector.meters import Meter
from connector.reconcile import (
    _aggregate,
    compare,
    kafka_value,
    pairs_to_compare,
    parse_whole_hour,
    render,
    summarise,
    to_json,
)


def meter(name: str, formula: str = "sum") -> Meter:
    return Meter(
        id=f"mtr_{name}",
        event_name=name,
        status="active",
        formula=formula,  # type: ignore[arg-type]
    )


def test_the_window_must_be_whole_hours() -> None:
    assert parse_whole_hour("2026-12-01T00:00:00Z", "--start") == 1796083200
    assert parse_whole_hour("2026-12-01T01:00:00+01:00", "--start") == 1796083200
    with pytest.raises(ConfigError, match=r"--end: '2026-12-01T10:15:00Z' is not a whole hour"):
        parse_whole_hour("2026-12-01T10:15:00Z", "--end")
    with pytest.raises(ConfigError, match=r"e\.g\. 2026-12-01T00:00:00Z"):
        parse_whole_hour("yesterday", "--start")


def test_each_formula_reads_its_own_figure_from_a_tally() -> None:
    found = Tally(sum=30, count=4, last_timestamp="2026-12-01T00:59:00.000Z", last_value=7)
    assert kafka_value(found, "sum") == 30
    assert kafka_value(found, "count") == 4
    assert kafka_value(found, "last") == 7
    assert kafka_value(found, None) == 30, "no meter: the sum is shown"
    assert kafka_value(None, "count") == 0


def test_summaries_add_up_and_last_takes_the_latest_window() -> None:
    rows = [
        {"aggregated_value": 2.0, "end_time": 7200},
        {"aggregated_value": 5, "end_time": 3600},
        {"aggregated_value": None, "end_time": 10800},
    ]
    assert _aggregate(rows, "sum") == 7.0
    assert _aggregate(rows, "last") == 2.0
    assert _aggregate([], "count") == 0.0


def totals() -> KafkaTotals:
    found = KafkaTotals(records_read=10, events=8, dead_lettered=1, outside_window=1)
    found.tallies[("api", "cus_a")] = Tally(10, 2, "2026-12-01T00:00:00.000Z", 4)
    found.tallies[("api", "cus_b")] = Tally(5, 1, "2026-12-01T00:00:00.000Z", 5)
    found.tallies[("gone", "cus_a")] = Tally(3, 1, "2026-12-01T00:00:00.000Z", 3)
    return found


def test_rows_put_mismatches_first_and_name_missing_meters() -> None:
    meters = {"api": meter("api")}
    pairs = pairs_to_compare(totals(), meters, event_names=[], customers=["cus_z"])
    assert pairs == [
        ("api", "cus_a"),
        ("api", "cus_b"),
        ("api", "cus_z"),
        ("gone", "cus_a"),
        ("gone", "cus_z"),
    ]
    stripe = {("api", "cus_a"): 10.0, ("api", "cus_b"): 4.0, ("api", "cus_z"): 0.0}
    rows = compare(totals(), meters, pairs, stripe)
    assert [(r.event_name, r.customer, r.status) for r in rows] == [
        ("api", "cus_b", "differs"),
        ("gone", "cus_a", "no_meter"),
        ("gone", "cus_z", "no_meter"),
        ("api", "cus_a", "match"),
        ("api", "cus_z", "match"),
    ]
    assert rows[0].difference == -1.0

    lines = render(rows, summarise(rows, totals(), 1796083200, 1796169600))
    assert lines[0].split()[:2] == ["EVENT", "NAME"]
    assert lines[1].split() == ["api", "cus_b", "mtr_api", "sum", "5", "4", "-1", "differs"]
    assert lines[2].split() == ["gone", "cus_a", "-", "-", "3", "-", "-", "no_meter"]
    assert lines[-1].startswith(
        "3 of 5 (meter, customer) pairs differ over [2026-12-01T00:00:00Z, 2026-12-02T00:00:00Z)"
    )
    report = orjson.loads(to_json(rows, totals(), 1796083200, 1796169600, lines[-1]))
    assert report["matches"] is False
    assert report["differing"] == 3
    assert report["rows"][0] == {
        "event_name": "api",
        "customer": "cus_b",
        "meter_id": "mtr_api",
        "formula": "sum",
        "kafka": 5,
        "stripe": 4,
        "difference": -1,
        "status": "differs",
    }


def test_event_names_asked_for_limit_the_extra_customers() -> None:
    pairs = pairs_to_compare(
        KafkaTotals(), {"api": meter("api"), "x": meter("x")}, event_names=["x"], customers=["c"]
    )
    assert pairs == [("x", "c")]
