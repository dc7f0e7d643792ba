"""A letter about a dead letter: the original record and source carried over, attempts + 1.

The producer is replaced by a recorder (what would be produced is pure logic); writing
letters to a real broker is proved by tests/integration.
"""

from __future__ import annotations

from typing import Any

import pytest

from connector.config import KafkaConfig
from connector.dlq import DeadLetterQueue, LetterOrigin
from connector.offsets import PartitionOffsets

ORIGINAL_HEADERS = [("trace-id", b"abc"), ("tenant", b"t1"), ("empty", None)]


class Message:
    """The parts of a confluent_kafka Message that the dead-letter queue reads."""

    def __init__(
        self, topic: str, partition: int, offset: int, headers: list[tuple[str, Any]]
    ) -> None:
        self._where = (topic, partition, offset)
        self._headers = headers

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_800_000_000_000)

    def key(self) -> bytes:
        return b"cus_1"

    def value(self) -> bytes:
        return b'{"customer": "cus_1"}'

    def headers(self) -> list[tuple[str, Any]]:
        return self._headers


class Recorder:
    def __init__(self) -> None:
        self.produced: list[dict[str, Any]] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.produced.append({"topic": topic, **kwargs})


def a_letter(**overrides: str) -> Message:
    ours = {
        "reason": "mapping_error",
        "message": "customer is missing",
        "source.topic": "usage",
        "source.partition": "3",
        "source.offset": "41",
        "source.timestamp": "1799999999000",
        "version": "0.0.1",
        "attempts": "2",
        "event_name": "api_requests",
        **overrides,
    }
    headers = ORIGINAL_HEADERS + [(f"meterstream.{k}", v.encode()) for k, v in ours.items()]
    return Message("usage.dlq", 0, 7, headers)


def test_the_origin_of_a_letter_is_its_source_and_its_own_headers() -> None:
    origin = LetterOrigin.of(a_letter())

    assert (origin.topic, origin.partition, origin.offset) == ("usage", 3, 41)
    assert origin.timestamp_ms == 1799999999000
    assert origin.attempts == 2
    assert origin.reason == "mapping_error"
    assert origin.event_name == "api_requests"
    assert origin.headers == ORIGINAL_HEADERS


def test_a_letter_without_a_timestamp_or_event_keeps_them_absent() -> None:
    origin = LetterOrigin.of(a_letter(**{"source.timestamp": "", "event_name": ""}))
    assert origin.timestamp_ms is None
    assert origin.event_name is None


@pytest.mark.parametrize(
    "headers",
    [
        [("trace-id", b"abc")],
        [("meterstream.source.topic", b"usage"), ("meterstream.source.partition", b"x")],
    ],
)
def test_a_record_that_is_not_a_meterstream_letter_has_no_origin(
    headers: list[tuple[str, bytes]],
) -> None:
    with pytest.raises(ValueError, match="not a meterstream dead letter"):
        LetterOrigin.of(Message("usage.dlq", 0, 1, headers))


def test_a_letter_about_a_letter_keeps_the_original_and_counts_one_more_attempt() -> None:
    written: list[Any] = []
    queue = DeadLetterQueue(
        KafkaConfig(bootstrap_servers="127.0.0.1:1", dead_letter_topic="usage.dlq"),
        on_written=written.append,
    )
    recorder = Recorder()
    queue._producer = recorder  # type: ignore[assignment]
    letter = a_letter()
    record = PartitionOffsets("usage.dlq", 0).track(letter, 7)

    queue.send(
        record,
        "rejected_by_stripe",
        "HTTP 400: no meter",
        request_id="req_1",
        event={"event_name": "api_requests", "identifier": "r-1", "timestamp": "", "payload": {}},
        origin=LetterOrigin.of(letter),
    )

    [produced] = recorder.produced
    assert produced["topic"] == "usage.dlq"
    assert (produced["key"], produced["value"]) == (letter.key(), letter.value())
    headers = produced["headers"]
    assert headers[: len(ORIGINAL_HEADERS)] == ORIGINAL_HEADERS, "original headers, in order"
    ours = {k: v.decode() for k, v in headers[len(ORIGINAL_HEADERS) :]}
    assert set(ours) == {
        f"meterstream.{name}"
        for name in (
            "reason",
            "message",
            "source.topic",
            "source.partition",
            "source.offset",
            "source.timestamp",
            "version",
            "attempts",
            "request_id",
            "event_name",
            "event_identifier",
        )
    }, "each meterstream header once: the old letter's are replaced, not repeated"
    assert ours["meterstream.reason"] == "rejected_by_stripe"
    assert ours["meterstream.request_id"] == "req_1"
    assert ours["meterstream.source.topic"] == "usage", "the record's source, not the DLQ"
    assert ours["meterstream.source.partition"] == "3"
    assert ours["meterstream.source.offset"] == "41"
    assert ours["meterstream.source.timestamp"] == "1799999999000"
    assert ours["meterstream.attempts"] == "3"
    assert queue.pending == 1
    assert not written, "resolved only by the delivery report"


def test_a_first_letter_still_points_at_the_record_it_was_read_from() -> None:
    queue = DeadLetterQueue(
        KafkaConfig(bootstrap_servers="127.0.0.1:1", dead_letter_topic="usage.dlq"),
        on_written=lambda record: None,
    )
    recorder = Recorder()
    queue._producer = recorder  # type: ignore[assignment]
    message = Message("usage", 2, 9, list(ORIGINAL_HEADERS))

    queue.send(PartitionOffsets("usage", 2).track(message, 9), "invalid_json", "bad", attempts=0)

    ours = {k: (v or b"").decode() for k, v in recorder.produced[0]["headers"]}
    assert ours["meterstream.source.topic"] == "usage"
    assert ours["meterstream.source.offset"] == "9"
    assert ours["meterstream.source.timestamp"] == "1800000000000"
    assert ours["meterstream.attempts"] == "0"
