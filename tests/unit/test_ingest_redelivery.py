"""Worker._ingest takes each offset of an assignment once, however often librdkafka hands
it out: after a pause and resume, a partition with no committed offset was seen fetched
again from its reset position (tests/integration/test_connector.py caught 463 records
billed twice, left to Stripe's dedupe). Real ``confluent_kafka.Message`` objects, the real
worker; nothing is sent."""

from __future__ import annotations

from confluent_kafka import Message

from bench.hotpath import TOPIC, _worker


def _message(partition: int, offset: int) -> Message:
    value = b'{"id":"rec-%d-%d","customer":"cus_1","event_name":"api_requests","value":1}' % (
        partition,
        offset,
    )
    return Message(topic=TOPIC, partition=partition, offset=offset, value=value)


def test_records_handed_out_again_are_not_taken_again() -> None:
    worker = _worker()
    worker._ledger.assign([(TOPIC, 0), (TOPIC, 1)])
    worker._ingest([_message(0, o) for o in range(5)] + [_message(1, 0)])
    # Fetched again from the start, within one poll and in the next one.
    worker._ingest([_message(0, o) for o in (0, 1, 2, 3, 4, 5, 6)] + [_message(1, 0)])
    worker._ingest([_message(0, o) for o in (2, 3, 7)])
    state = worker._ledger.get(TOPIC, 0)
    assert state is not None
    assert [record.offset for record in state.pending] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert state.last_offset == 7
    assert worker.stats["consumed"] == 9  # 8 of partition 0, 1 of partition 1
    events = [e["identifier"] for b in worker._batcher.due(force=True) for e in b.events]
    assert sorted(events) == sorted({*events}), "an event batched twice"
    assert len(events) == 9


def test_a_new_assignment_takes_its_records_from_wherever_it_starts() -> None:
    worker = _worker()
    worker._ledger.assign([(TOPIC, 0)])
    worker._ingest([_message(0, o) for o in range(3)])
    old = worker._ledger.get(TOPIC, 0)
    assert old is not None
    worker._ledger.close(old)
    worker._ledger.assign([(TOPIC, 0)])  # back, from an earlier committed offset
    worker._ingest([_message(0, o) for o in range(3)])
    state = worker._ledger.get(TOPIC, 0)
    assert state is not None
    assert [record.offset for record in state.pending] == [0, 1, 2]
