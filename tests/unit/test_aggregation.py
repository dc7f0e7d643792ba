"""Blocks and aggregates (pure logic): sum, last and count meters, duplicates, stable
identifiers, the commit cap and metadata, and the property that any split bills the same."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.aggregation import Aggregator, Block, Started
from connector.block_range import BlockRange
from connector.config import AggregationConfig, MappingConfig
from connector.mapping import Mapper, MeterEventBody
from connector.meters import Meter, MeterCatalog
from connector.offsets import PartitionOffsets, PendingRecord
from connector.timestamps import format_rfc3339_ms, wire_epoch

#: A fixed "now" for the mapper's window check: no wall clock in these tests.
NOW = 1_800_000_000.0
HOUR = 3600


def _meter(name: str, formula: str, window: str | None = None) -> Meter:
    return Meter(
        id=f"mtr_{name}",
        event_name=name,
        status="active",
        formula=formula,  # type: ignore[arg-type]
        event_time_window=window,
    )


CATALOG = MeterCatalog(
    [
        _meter("api", "sum"),
        _meter("gauge", "last"),
        _meter("requests", "count"),
        _meter("totals", "sum", window="hour"),
    ],
    allow_windowed=True,
)
MAPPING = MappingConfig(dimensions=["region"])
MAPPER = Mapper(MAPPING, clock=lambda: NOW)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _aggregator(clock: Clock | None = None, **settings: Any) -> Aggregator:
    config = AggregationConfig(enabled=True, **settings)
    return Aggregator(config, CATALOG, MAPPING, clock=clock or Clock())


def _record(
    offset: int,
    *,
    name: str = "api",
    customer: str = "cus_a",
    value: int = 1,
    at: float = NOW - 2 * HOUR,
    record_id: str | None = None,
    region: str | None = None,
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "event_name": name,
        "customer": customer,
        "value": value,
        "timestamp": format_rfc3339_ms(at),
    }
    if record_id is not None:
        raw["id"] = record_id
    if region is not None:
        raw["region"] = region
    return raw


def _feed(
    aggregator: Aggregator, state: PartitionOffsets, offset: int, raw: dict[str, Any]
) -> PendingRecord:
    record = state.track(None, offset)
    aggregator.track(record)
    events = MAPPER.map(raw, topic=state.topic, partition=state.partition, offset=offset,
                        kafka_timestamp_ms=None)  # fmt: skip
    record.remaining = len(events)
    aggregator.add(record, events)
    return record


def _answer(started: Started) -> None:
    for _event, carrier in started.events:
        for member in carrier.members:
            member.finish()
    for _event, record in started.direct:
        record.finish()
    for record in started.resolved:
        record.finish()


def test_sum_last_and_count_in_one_block() -> None:
    aggregator = _aggregator()
    state = PartitionOffsets("usage", 0)
    aggregator.assign(state, None)
    bucket = NOW - 2 * HOUR - (NOW % 60)  # a minute's start
    for offset, raw in enumerate(
        [
            _record(0, value=5, at=bucket + 1),
            _record(1, value=7, at=bucket + 59),
            _record(2, value=100, at=bucket + 61),  # the next minute: another aggregate
            _record(3, name="gauge", value=9, at=bucket + 30),
            _record(4, name="gauge", value=4, at=bucket + 10),  # older: not the last
            _record(5, name="requests", value=1),
            _record(6, name="totals", value=50),  # windowed (allowed): one per record
        ]
    ):
        _feed(aggregator, state, offset, raw)
    aggregator.close_due(lambda _s: True, pressed=False)
    [(_, block)] = aggregator.startable()
    started = aggregator.start(state, block)
    assert [(e["event_name"], r.offset) for e, r in started.direct] == [
        ("requests", 5),
        ("totals", 6),
    ]
    got = {
        (e["event_name"], e["timestamp"], e["payload"]["value"]): len(c.members)
        for e, c in started.events
    }
    assert got == {
        ("api", format_rfc3339_ms(bucket), "12"): 2,
        ("api", format_rfc3339_ms(bucket + 60), "100"): 1,
        ("gauge", format_rfc3339_ms(bucket + 30), "9"): 2,
    }
    assert started.resolved == []


def test_dimensions_and_customers_are_separate_aggregates() -> None:
    aggregator = _aggregator()
    state = PartitionOffsets("usage", 0)
    aggregator.assign(state, None)
    at = NOW - HOUR
    for offset, raw in enumerate(
        [
            _record(0, at=at, region="eu"),
            _record(1, at=at, region="us"),
            _record(2, at=at, region="eu", customer="cus_b"),
            _record(3, at=at, region="eu", value=3),
        ]
    ):
        _feed(aggregator, state, offset, raw)
    aggregator.close_due(lambda _s: True, pressed=False)
    [(_, block)] = aggregator.startable()
    payloads = sorted(
        tuple(sorted(e["payload"].items())) for e, _c in aggregator.start(state, block).events
    )
    assert payloads == [
        (("region", "eu"), ("stripe_customer_id", "cus_a"), ("value", "4")),
        (("region", "eu"), ("stripe_customer_id", "cus_b"), ("value", "1")),
        (("region", "us"), ("stripe_customer_id", "cus_a"), ("value", "1")),
    ]


def test_a_duplicate_record_id_is_summed_once_and_answered_with_its_aggregate() -> None:
    aggregator = _aggregator()
    state = PartitionOffsets("usage", 0)
    aggregator.assign(state, None)
    at = NOW - HOUR
    _feed(aggregator, state, 0, _record(0, value=5, at=at, record_id="r1"))
    _feed(aggregator, state, 1, _record(1, value=5, at=at, record_id="r1"))
    _feed(aggregator, state, 2, _record(2, value=2, at=at, record_id="r2"))
    aggregator.close_due(lambda _s: True, pressed=False)
    [(_, block)] = aggregator.startable()
    [(event, carrier)] = aggregator.start(state, block).events
    assert event["payload"]["value"] == "7"
    assert sorted(m.offset for m in carrier.members) == [0, 1, 2]


def test_identifiers_depend_on_the_block_not_on_arrival_order() -> None:
    def aggregate(order: list[int], start: int) -> list[MeterEventBody]:
        aggregator = _aggregator()
        state = PartitionOffsets("usage", 3)
        aggregator.assign(state, None)
        raws = [_record(o, value=o + 1, at=NOW - HOUR + o, customer=f"c{o % 2}") for o in range(6)]
        records = [state.track(None, start + o) for o in range(6)]
        for record in records:
            aggregator.track(record)
        for o in order:  # the meter gate may hand records over late, out of order
            events = MAPPER.map(raws[o], topic="usage", partition=3, offset=start + o,
                                kafka_timestamp_ms=None)  # fmt: skip
            records[o].remaining = 1
            aggregator.add(records[o], events)
        aggregator.close_due(lambda _s: True, pressed=False)
        [(_, block)] = aggregator.startable()
        return sorted(
            (e for e, _c in aggregator.start(state, block).events), key=lambda e: e["identifier"]
        )

    first = aggregate([0, 1, 2, 3, 4, 5], 100)
    assert first == aggregate([5, 3, 1, 0, 2, 4], 100)
    other = aggregate([0, 1, 2, 3, 4, 5], 101)  # another block start: other identifiers
    assert {e["identifier"] for e in first}.isdisjoint(e["identifier"] for e in other)
    assert all(len(e["identifier"]) <= 100 for e in first)


def test_a_sum_beyond_fifteen_digits_continues_in_a_second_part() -> None:
    aggregator = _aggregator()
    state = PartitionOffsets("usage", 0)
    aggregator.assign(state, None)
    big = 10**15 - 1
    for offset in range(3):
        _feed(aggregator, state, offset, _record(offset, value=big, at=NOW - HOUR))
    aggregator.close_due(lambda _s: True, pressed=False)
    [(_, block)] = aggregator.startable()
    values = [e["payload"]["value"] for e, _c in aggregator.start(state, block).events]
    assert values == [str(big)] * 3


def test_blocks_close_on_size_age_catch_up_and_pressure_and_start_one_at_a_time() -> None:
    clock = Clock()
    aggregator = _aggregator(clock, max_records=3, max_seconds=5)
    state = PartitionOffsets("usage", 0)
    aggregator.assign(state, None)
    records = [_feed(aggregator, state, o, _record(o, at=NOW - HOUR)) for o in range(4)]
    blocks = list(aggregator.blocks_of(state))
    assert [(b.start, b.last, b.closed) for b in blocks] == [(0, 2, True), (3, 3, False)]
    assert state.to_commit() == 0  # capped at the first unfinished block
    [(_, head)] = aggregator.startable()
    assert aggregator.metadata(state, 0) == ""  # not started: nothing in doubt yet
    started = aggregator.start(state, head)
    assert aggregator.metadata(state, 0) == "meterstream.block/1 0 3"
    assert aggregator.startable() == []  # the second is open, and the first unanswered
    clock.now = 5.0
    aggregator.close_due(lambda _s: False, pressed=False)
    assert aggregator.startable() == []  # closed, but waits for the first
    assert aggregator.in_flight(state)
    _answer(started)
    [(_, second)] = aggregator.startable()
    assert second.start == 3
    assert state.to_commit() == 3
    aggregator.start(state, second)
    records[3].finish()
    assert aggregator.startable() == []
    assert state.to_commit() == 4
    assert state.cap is None
    _feed(aggregator, state, 4, _record(4, at=NOW - HOUR))
    aggregator.close_due(lambda _s: False, pressed=True)
    assert [b.closed for b in aggregator.blocks_of(state)] == [True]


def test_a_partition_at_two_blocks_takes_nothing_more_until_the_first_is_done() -> None:
    aggregator = _aggregator(max_records=2)
    state = PartitionOffsets("usage", 0)
    other = PartitionOffsets("usage", 1)
    aggregator.assign(state, None)
    aggregator.assign(other, None)
    for offset in range(4):
        _feed(aggregator, state, offset, _record(offset, at=NOW - HOUR))
    assert aggregator.at_bound() == [state]
    # Fetched past the bound: not taken, and the first of them is what to read again.
    assert [aggregator.holds_off(state, o) for o in (4, 5)] == [True, True]
    assert not aggregator.holds_off(other, 0)
    [(_, head)] = aggregator.startable()
    started = aggregator.start(state, head)
    aggregator.settle()
    assert aggregator.released() == []  # the first block is still in flight
    _answer(started)
    aggregator.settle()
    assert aggregator.released() == [(state, 4)]
    # The seek back failed: still held off, and released again (with the same offset) later.
    aggregator.hold_again(state, 4)
    assert aggregator.holds_off(state, 6)
    assert aggregator.released() == [(state, 4)]
    assert aggregator.at_bound() == []
    assert not aggregator.holds_off(state, 4)
    assert [b.start for b in aggregator.blocks_of(state)] == [2]


def test_a_block_in_doubt_is_re_formed_to_its_recorded_end() -> None:
    aggregator = _aggregator(max_records=100)
    state = PartitionOffsets("usage", 0)
    aggregator.assign(state, BlockRange.decode("meterstream.block/1 10 13", 10))
    assert state.to_commit() is None
    assert state.cap == 10
    for offset in range(10, 15):
        _feed(aggregator, state, offset, _record(offset, at=NOW - HOUR))
    spans = [(b.start, b.last, b.closed) for b in aggregator.blocks_of(state)]
    assert spans == [(10, 12, True), (13, 14, False)]
    [(_, head)] = aggregator.startable()
    aggregator.start(state, head)
    assert aggregator.metadata(state, 10) == "meterstream.block/1 10 13"


def test_block_range_metadata_round_trips_and_ignores_anything_else() -> None:
    assert BlockRange.decode(BlockRange(7, 9).encode(), 7) == BlockRange(7, 9)
    for text, committed in [
        ("", 7),
        (None, 7),
        ("meterstream.block/1 7 9", 8),  # offsets reset since: not this block
        ("meterstream.block/1 9 7", 9),
        ("someone else's note", 7),
        ("meterstream.block/1 7 x", 7),
    ]:
        assert BlockRange.decode(text, committed) is None


# -- the property: any split bills what the raw records bill -----------------------------------


def _bill(events: list[MeterEventBody]) -> dict[tuple[str, str, int], int]:
    """What Stripe bills per (meter, customer, hour): sums, or the latest value (ties: later
    received), each identifier once."""
    seen: set[str] = set()
    sums: dict[tuple[str, str, int], int] = defaultdict(int)
    latest: dict[tuple[str, str, int], tuple[float, int, int]] = {}
    for order, event in enumerate(events):
        if event["identifier"] in seen:
            continue
        seen.add(event["identifier"])
        epoch = wire_epoch(event["timestamp"])
        assert epoch is not None
        key = (event["event_name"], event["payload"]["stripe_customer_id"], int(epoch // HOUR))
        value = int(event["payload"]["value"])
        if CATALOG.get(event["event_name"]).formula == "last":  # type: ignore[union-attr]
            if key not in latest or (epoch, order) >= latest[key][:2]:
                latest[key] = (epoch, order, value)
        else:
            sums[key] += value
    billed = dict(sums)
    billed.update({key: value for key, (_e, _o, value) in latest.items()})
    return billed


raw_records = st.lists(
    st.tuples(
        st.sampled_from(["api", "gauge", "requests"]),
        st.sampled_from(["cus_a", "cus_b", "cus_c"]),
        st.integers(0, 1000),
        st.integers(0, 3 * HOUR - 1),  # seconds into a three-hour span
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    records=raw_records,
    cuts=st.sets(st.integers(1, 59)),
    bucket=st.sampled_from([60, 300, 3600]),
)
def test_any_split_into_blocks_and_requests_bills_what_the_raw_records_bill(
    records: list[tuple[str, str, int, int]], cuts: set[int], bucket: int
) -> None:
    start = NOW - 4 * HOUR
    start -= start % HOUR
    raws = [
        _record(o, name=n, customer=c, value=v, at=start + s)
        for o, (n, c, v, s) in enumerate(records)
    ]
    raw_events = [
        event
        for o, raw in enumerate(raws)
        for event in MAPPER.map(raw, topic="usage", partition=0, offset=o, kafka_timestamp_ms=None)
    ]
    # Stripe takes last-meter ties in receipt order; the aggregate takes the higher offset,
    # which is the receipt order of the raw events. (Duplicate ids are summed once only
    # within a block, as documented: test_a_duplicate_record_id_... covers them.)
    aggregator = _aggregator(bucket_seconds=bucket, max_records=10_000)
    state = PartitionOffsets("usage", 0)
    aggregator.assign(state, None)
    sent: list[MeterEventBody] = []
    for offset, raw in enumerate(raws):
        _feed(aggregator, state, offset, raw)
        if offset + 1 in cuts:
            aggregator.close_due(lambda _s: False, pressed=True)
            sent.extend(_start_all(aggregator, state))
    aggregator.close_due(lambda _s: True, pressed=False)
    sent.extend(_start_all(aggregator, state))
    assert list(aggregator.blocks_of(state)) == [] or all(
        b.started for b in aggregator.blocks_of(state)
    )
    assert _bill(sent) == _bill(raw_events)
    assert len(sent) <= len(raw_events)


def _start_all(aggregator: Aggregator, state: PartitionOffsets) -> list[MeterEventBody]:
    sent: list[MeterEventBody] = []
    while ready := aggregator.startable():
        for _state, block in ready:
            started = aggregator.start(state, block)
            _answer(started)
            sent.extend(event for event, _carrier in started.events)
            sent.extend(event for event, _record in started.direct)
    return sent


def test_an_empty_block_is_never_made() -> None:
    assert Block(5, 0.0).range() == BlockRange(5, 5)


def test_connected_accounts_are_separate_aggregates_with_their_own_formulas() -> None:
    """The account is part of the key (mapping.stripe_account): one customer's usage in two
    accounts makes two aggregates, each carrying its account to its batch, and each account's
    own meters decide the formula (here "api" sums on one account and keeps the last on the
    other)."""
    accounts = {"acct_last": MeterCatalog([_meter("api", "last")])}
    config = AggregationConfig(enabled=True)
    aggregator = Aggregator(config, CATALOG, MAPPING, clock=Clock(), catalog_of=accounts.get)  # type: ignore[arg-type]
    state = PartitionOffsets("usage", 0)
    aggregator.assign(state, None)
    bucket = NOW - 2 * HOUR - (NOW % 60)
    feed = [(None, 5, 1), ("acct_last", 7, 20), (None, 2, 30), ("acct_last", 3, 10)]
    for offset, (account, value, second) in enumerate(feed):
        record = state.track(None, offset)
        record.account = account
        aggregator.track(record)
        raw = _record(offset, value=value, at=bucket + second)
        events = MAPPER.map(raw, topic="usage", partition=0, offset=offset,
                            kafka_timestamp_ms=None)  # fmt: skip
        record.remaining = len(events)
        aggregator.add(record, events)
    aggregator.close_due(lambda _s: True, pressed=False)
    [(_, block)] = aggregator.startable()
    started = aggregator.start(state, block)
    got = {
        (carrier.account, event["payload"]["value"], event["timestamp"]): sorted(
            m.offset for m in carrier.members
        )
        for event, carrier in started.events
    }
    assert got == {
        (None, "7", format_rfc3339_ms(bucket)): [0, 2],  # the platform's sum meter
        ("acct_last", "7", format_rfc3339_ms(bucket + 20)): [1, 3],  # the account's last meter
    }
    identifiers = {event["identifier"] for event, _carrier in started.events}
    assert len(identifiers) == 2
