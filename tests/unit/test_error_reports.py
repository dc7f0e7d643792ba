"""Reading Stripe's error reports and the cursor that keeps each from being counted twice."""

from __future__ import annotations

from connector.error_reports import Cursor, ErrorReport


def _event(event_id: str, created: str, **data: object) -> dict[str, object]:
    return {
        "id": event_id,
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "created": created,
        "related_object": {
            "id": "mtr_1",
            "type": "billing.meter",
            "url": "/v1/billing/meters/mtr_1",
        },
        "data": data,
    }


def test_a_report_reads_codes_counts_samples_and_both_identifier_shapes() -> None:
    report = ErrorReport.from_event(
        _event(
            "evt_1",
            "2026-12-01T10:00:00.000Z",
            developer_message_summary="2 events dropped",
            validation_start="2026-12-01T09:00:00.000Z",
            validation_end="2026-12-01T10:00:00.000Z",
            reason={
                "error_count": 5,
                "error_types": [
                    {
                        "code": "meter_event_customer_not_found",
                        "error_count": 3,
                        "sample_errors": [
                            {"error_message": "no cus_x", "request": {"identifier": "id-1"}},
                            {"error_message": "no cus_y", "request": {"id": "req_2"}},
                        ],
                    },
                    {"code": "a_code_stripe_added_later", "error_count": 2},
                ],
            },
        )
    )
    assert report.meter_id == "mtr_1"
    assert report.error_count == 5
    assert [(e.code, e.count) for e in report.errors] == [
        ("meter_event_customer_not_found", 3),
        ("a_code_stripe_added_later", 2),  # an open list: passed through as it comes
    ]
    assert report.errors[0].samples == ("no cus_x", "no cus_y")
    assert report.errors[0].identifiers == ("id-1", "req_2")
    assert report.validation_start == "2026-12-01T09:00:00.000Z"


def test_a_report_without_a_breakdown_counts_under_its_type() -> None:
    event = _event("evt_2", "2026-12-01T10:00:00.000Z", reason={"error_count": 4})
    event["type"] = "v1.billing.meter.no_meter_found"
    event["related_object"] = None
    report = ErrorReport.from_event(event)
    assert report.meter_id is None
    assert [(e.code, e.count) for e in report.errors] == [("v1.billing.meter.no_meter_found", 4)]


def test_the_cursor_admits_each_report_once_and_nothing_older() -> None:
    first = ErrorReport.from_event(_event("evt_a", "2026-12-01T10:00:00.000Z"))
    same_instant = ErrorReport.from_event(_event("evt_b", "2026-12-01T10:00:00.000Z"))
    later = ErrorReport.from_event(_event("evt_c", "2026-12-01T10:00:05.000Z"))
    older = ErrorReport.from_event(_event("evt_0", "2026-12-01T09:59:59.000Z"))
    cursor = Cursor("2026-12-01T10:00:00.000Z")
    assert not cursor.admits(older)
    assert cursor.admits(first)
    cursor.advance(first)
    assert not cursor.admits(first), "handled once"
    assert cursor.admits(same_instant), "another report of the same instant is new"
    cursor.advance(same_instant)
    cursor.advance(later)
    assert cursor.created == "2026-12-01T10:00:05.000Z"
    assert not cursor.admits(first)
    assert not cursor.admits(later)
    assert cursor.ids == {"evt_c"}
