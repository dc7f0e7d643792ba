"""Exact pre-aggregation: a partition's records in blocks, one event per aggregate key.

A **block** is a contiguous offset range of one partition (docs/aggregation.md). Every
record consumed joins its partition's open block; the block closes after
``aggregation.max_records`` records, ``max_seconds`` after its first, as soon as the
partition is caught up, or when fetching is paused on held records. A closed block starts
(its aggregates are made and sent) only once the block before it is fully resolved and its
range has been committed as the partition's commit metadata (``connector.block_range``).
A block re-formed from that metadata ends exactly where the first one did.

At most two blocks per partition are held (one started, the next filling or closed): a
partition whose second block closes is **at its bound**. Records fetched for it past that
point are not taken (``holds_off``); the worker pauses the partition and, once the first
block is resolved, seeks it back to the first record not taken and resumes it
(``released``). Memory is bounded by ``2 x max_records`` per partition, never the backlog.

Within a block, events of **sum** and **last** meters are grouped by the aggregation key
(connected account, event name, customer and dimensions, timestamp bucket):

- sum: the value is the sum of the values, the timestamp the bucket's start;
- last: the value and timestamp of the record with the latest timestamp (ties: the
  higher offset);
- count meters, meters with an ``event_time_window`` (``meters.allow_windowed``) and
  event names without a known meter go one event per record, as without aggregation.

An event whose identifier appeared earlier in the block (a duplicate record id) is summed
once: it stays a member of its aggregate (answered with it) without adding its value.
Folding happens when the block starts, in offset order, so the result depends only on the
block's records, never on the order they were handed in. An aggregate's identifier is a
hash of (topic, partition, block start, aggregation key, part), hence the same in every
process that re-forms the block; a sum that would exceed 15 digits continues in a next part.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Final, NamedTuple

import orjson

from connector import metrics
from connector.block_range import BlockRange
from connector.config import AggregationConfig, MappingConfig
from connector.identifiers import hashed
from connector.mapping import MeterEventBody
from connector.meters import MeterCatalog
from connector.offsets import PartitionOffsets, PendingRecord
from connector.timestamps import format_rfc3339_ms, parse_timestamp, wire_epoch

#: Stripe refuses values with more than 15 digits: a larger sum continues in a next part.
_VALUE_LIMIT = 10**15

Key = tuple[str, int]
#: (connected account, event name, payload without the value, bucket start as wire text).
AggregateKey = tuple[str | None, str, tuple[tuple[str, str], ...], str]
#: One event of one record waiting in a block: (offset, value, wire timestamp, the event,
#: its record, counted). ``counted`` is False for an identifier seen earlier in the block.
#: A plain tuple: one is made per record on the hot path.
Contribution = tuple[int, int, str, MeterEventBody, PendingRecord, bool]
_OFFSET: Final = 0
_VALUE: Final = 1
_STAMP: Final = 2
_EVENT: Final = 3
_RECORD: Final = 4
_COUNTED: Final = 5
#: Bucket starts are cached per minute of wire text; the cache is cleared beyond this.
_BUCKET_CACHE_LIMIT = 100_000


class AggregateRecord(PendingRecord):
    """What a batch carries for one aggregate event: its answer answers every member.

    ``members[i]`` is a record the aggregate summed (or a duplicate it absorbed) and
    ``member_events[i]`` that record's own event, for its dead letter.
    """

    __slots__ = ("identifier", "member_events", "members")

    def __init__(
        self,
        partition: PartitionOffsets,
        identifier: str,
        members: list[PendingRecord],
        member_events: list[MeterEventBody],
    ) -> None:
        super().__init__(members[0].message, partition, members[0].offset)
        self.identifier = identifier
        #: Every member shares it: the account is part of the aggregation key.
        self.account = members[0].account
        self.members = members
        self.member_events = member_events


class Block:
    """One partition's offset range and what its records contribute."""

    __slots__ = (
        "closed",
        "direct",
        "duplicates",
        "end",
        "groups",
        "last",
        "latest_added",
        "opened_at",
        "records",
        "reordered",
        "seen",
        "start",
        "started",
    )

    def __init__(self, start: int, opened_at: float, end: int | None = None) -> None:
        self.start = start
        #: Exclusive end fixed by commit metadata (a re-formed block), else None.
        self.end = end
        self.last = start - 1
        self.opened_at = opened_at
        #: How many records joined (a count: the records themselves are in the groups).
        self.records = 0
        self.groups: dict[AggregateKey, list[Contribution]] = {}
        #: Events sent one per record (count meters...), sent when the block starts.
        self.direct: list[tuple[MeterEventBody, PendingRecord]] = []
        #: Identifier -> the offset that counts for it (the first seen).
        self.seen: dict[str, int] = {}
        #: Events whose identifier was seen earlier in the block (summed once).
        self.duplicates = 0
        #: The highest offset added; a lower one later means records came out of order
        #: (held by the meter checks), and the fold re-decides what counts, by offset.
        self.latest_added = -1
        self.reordered = False
        self.closed = False
        self.started = False

    def range(self) -> BlockRange:
        """What the commit metadata says about this block."""
        return BlockRange(self.start, self.end if self.end is not None else self.last + 1)


class _Partition:
    __slots__ = ("blocks", "state")

    def __init__(self, state: PartitionOffsets) -> None:
        self.state = state
        #: Oldest first; only the last one may be open, only the first one started.
        self.blocks: deque[Block] = deque()


class Started(NamedTuple):
    """What starting a block produced: aggregate events with their carriers, the events
    sent one per record with their records, and the members answered already (duplicates
    whose first occurrence is in another aggregate)."""

    events: list[tuple[MeterEventBody, AggregateRecord]]
    direct: list[tuple[MeterEventBody, PendingRecord]]
    resolved: list[PendingRecord]


class Aggregator:
    """Blocks per assigned partition; the worker's loop drives it (one thread)."""

    def __init__(
        self,
        config: AggregationConfig,
        catalog: MeterCatalog,
        mapping: MappingConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        catalog_of: Callable[[str], MeterCatalog] | None = None,
    ) -> None:
        self._bucket = config.bucket_seconds
        self._max_records = config.max_records
        self._max_seconds = config.max_seconds
        self._catalog = catalog
        self._clock = clock
        #: A connected account's meters (``mapping.stripe_account``): formulas are theirs.
        self._catalog_of = catalog_of
        self._value_keys = {
            entry.event_name: entry.value_payload_key or mapping.value_payload_key
            for entry in mapping.fan_out
        }
        self._value_key = mapping.value_payload_key
        self._partitions: dict[Key, _Partition] = {}
        #: The first 16 characters of a wire timestamp (to the minute) -> its bucket start.
        self._bucket_cache: dict[str, str] = {}
        #: Partitions at their bound (two blocks, the newer closed) -> the first offset
        #: fetched and not taken since (to be read again), or None.
        self._held_off: dict[PartitionOffsets, int | None] = {}
        #: The last record tracked and its block: ``add`` follows ``track`` for the same
        #: record on the hot path, and polls come in runs of one partition.
        self._tracked: PendingRecord | None = None
        self._tracked_block: Block | None = None
        self._last_state: PartitionOffsets | None = None
        self._last_entry: _Partition | None = None
        #: Buckets are whole minutes: a wire timestamp's minute decides its bucket.
        self._minute_buckets = self._bucket % 60 == 0

    # -- assignment -------------------------------------------------------------------------

    def assign(self, state: PartitionOffsets, resume: BlockRange | None) -> None:
        """A newly assigned partition; ``resume`` is the block its last owner had started."""
        entry = self._partitions[(state.topic, state.partition)] = _Partition(state)
        if resume is not None:
            entry.blocks.append(Block(resume.start, self._clock(), end=resume.end))
            state.cap = resume.start

    def forget(self, state: PartitionOffsets) -> None:
        """A revoked or lost partition: its blocks go (the next owner re-forms them)."""
        entry = self._partitions.get((state.topic, state.partition))
        if entry is not None and entry.state is state:
            del self._partitions[(state.topic, state.partition)]
        self._held_off.pop(state, None)
        self._last_state = self._last_entry = None
        self._tracked = self._tracked_block = None

    # -- the bound: two blocks per partition ------------------------------------------------

    def holds_off(self, state: PartitionOffsets, offset: int) -> bool:
        """Whether a fetched record must not be taken: its partition is at its bound.

        Called for every record before it is tracked; the worker re-reads it later."""
        held_off = self._held_off
        if not held_off or state not in held_off:
            return False
        first = held_off[state]
        if first is None or offset < first:
            held_off[state] = offset
        return True

    def at_bound(self) -> list[PartitionOffsets]:
        """The partitions to keep paused: their two blocks are in memory."""
        return list(self._held_off)

    def released(self) -> list[tuple[PartitionOffsets, int | None]]:
        """Partitions no longer at their bound (call after ``settle``), each with the first
        offset it must be read from again (None: nothing was left unread)."""
        done = [
            (state, first)
            for state, first in self._held_off.items()
            if not _at_bound(self._partitions[(state.topic, state.partition)].blocks)
        ]
        for state, _first in done:
            del self._held_off[state]
        return done

    def hold_again(self, state: PartitionOffsets, first: int) -> None:
        """``released`` named ``state`` but it could not be read again from ``first`` (the
        seek failed): keep it held off, to be released (and sought) on a later turn."""
        self._held_off[state] = first

    def _check_bound(self, entry: _Partition) -> None:
        if _at_bound(entry.blocks):
            self._held_off.setdefault(entry.state, None)

    # -- records in -------------------------------------------------------------------------

    def track(self, record: PendingRecord) -> None:
        """A consumed record joins its partition's open block (opening one if needed)."""
        state = record.partition
        if state is self._last_state:
            entry = self._last_entry
            assert entry is not None
        else:
            entry = self._last_entry = self._partitions[(state.topic, state.partition)]
            self._last_state = state
        blocks = entry.blocks
        offset = record.offset
        block = blocks[-1] if blocks and not blocks[-1].closed else None
        if block is not None and block.end is not None and offset >= block.end:
            block.closed = True
            block = None
        if block is None:
            block = Block(offset, self._clock())
            if not blocks:
                state.cap = offset
            blocks.append(block)
        block.records += 1
        block.last = offset
        self._tracked = record
        self._tracked_block = block
        if block.end is None:
            if block.records >= self._max_records:
                block.closed = True
                self._check_bound(entry)
        elif offset >= block.end - 1:
            block.closed = True
            self._check_bound(entry)

    def add(self, record: PendingRecord, events: list[MeterEventBody]) -> None:
        """File the record's events in its block: aggregatable ones in their group, the
        others to be sent one per record when the block starts."""
        if record is self._tracked:
            block = self._tracked_block
            assert block is not None
        else:
            block = self._block_of(record)
        offset = record.offset
        if offset < block.latest_added:
            block.reordered = True
        else:
            block.latest_added = offset
        account = record.account
        get_meter = self._catalog_for(account).get
        groups = block.groups
        seen = block.seen
        minute_buckets = self._bucket_cache if self._minute_buckets else None
        for event in events:
            name = event["event_name"]
            meter = get_meter(name)
            if meter is None or meter.formula == "count" or meter.event_time_window:
                block.direct.append((event, record))
                continue
            # The payload without its value, in C: a copy and a pop, sorted only when
            # there are dimensions besides the customer.
            rest_items = event["payload"].copy()
            value = int(rest_items.pop(self._value_keys.get(name, self._value_key)))
            if len(rest_items) == 1:
                rest = tuple(rest_items.items())
            else:
                rest = tuple(sorted(rest_items.items()))
            stamp = event["timestamp"]
            bucket = minute_buckets.get(stamp[:16]) if minute_buckets is not None else None
            key = (account, name, rest, bucket or self._bucket_of(stamp))
            identifier = event["identifier"]
            counted = identifier not in seen
            if counted:
                seen[identifier] = offset
            else:
                block.duplicates += 1
            contribution = (offset, value, stamp, event, record, counted)
            group = groups.get(key)
            if group is None:
                groups[key] = [contribution]
            else:
                group.append(contribution)

    def _catalog_for(self, account: str | None) -> MeterCatalog:
        if account is None or self._catalog_of is None:
            return self._catalog
        return self._catalog_of(account)

    def _bucket_of(self, stamp: str) -> str:
        """The wire timestamp of the start of ``stamp``'s bucket."""
        minute = stamp[:16]
        cache = self._bucket_cache
        found = cache.get(minute) if self._bucket % 60 == 0 else None
        if found is not None:
            return found
        epoch = wire_epoch(stamp)
        if epoch is None:
            epoch = parse_timestamp(stamp)
        start = format_rfc3339_ms(int(epoch // self._bucket) * self._bucket)
        if self._bucket % 60 == 0:
            if len(cache) >= _BUCKET_CACHE_LIMIT:
                cache.clear()
            cache[minute] = start
        return start

    def _block_of(self, record: PendingRecord) -> Block:
        state = record.partition
        blocks = self._partitions[(state.topic, state.partition)].blocks
        for block in reversed(blocks):
            if record.offset >= block.start:
                if block.started:  # cannot happen: a block starts only when nothing is held
                    raise RuntimeError(f"record {record.offset} reached a started block")
                return block
        raise RuntimeError(f"record {record.offset} is in no block")

    # -- closing and starting -----------------------------------------------------------------

    def close_due(self, caught_up: Callable[[PartitionOffsets], bool], *, pressed: bool) -> None:
        """Close open blocks that are due: old enough, caught up, or fetching is paused."""
        now = self._clock()
        for entry in self._partitions.values():
            blocks = entry.blocks
            if not blocks or blocks[-1].closed or blocks[-1].records == 0:
                continue
            block = blocks[-1]
            # A re-formed block (``end`` set) closes on its range, or when nothing more comes.
            timely = block.end is None and (pressed or now - block.opened_at >= self._max_seconds)
            if timely or caught_up(entry.state):
                block.closed = True
                self._check_bound(entry)

    def settle(self) -> None:
        """Drop started blocks whose every record is resolved (the cap moves on)."""
        for entry in self._partitions.values():
            state = entry.state
            blocks = entry.blocks
            while blocks and blocks[0].started and _resolved(state, blocks[0]):
                blocks.popleft()
                state.cap = blocks[0].start if blocks else None

    def startable(self) -> list[tuple[PartitionOffsets, Block]]:
        """The closed blocks whose predecessor is resolved (after ``settle``)."""
        self.settle()
        return [
            (entry.state, entry.blocks[0])
            for entry in self._partitions.values()
            if entry.blocks and entry.blocks[0].closed and not entry.blocks[0].started
        ]

    @staticmethod
    def needs_commit(block: Block) -> bool:
        """Whether starting ``block`` sends aggregates (then its range must be durable first)."""
        return bool(block.groups)

    def start(self, state: PartitionOffsets, block: Block) -> Started:
        """Fold the block's groups into aggregate events (call once its range is durable)."""
        block.started = True
        groups = _recounted(block.groups) if block.reordered else block.groups
        # Without duplicates (the usual case) every contribution counts: no filtering.
        every_one_counts = block.duplicates == 0 and not block.reordered
        events: list[tuple[MeterEventBody, AggregateRecord]] = []
        resolved: list[PendingRecord] = []
        summed: dict[str, int] = {}
        made: dict[str, int] = {}
        for key, group in groups.items():
            counted = group if every_one_counts else [c for c in group if c[_COUNTED]]
            if not counted:
                resolved.extend(map(_record_of, group))
                continue
            meter = self._catalog_for(key[0]).get(key[1])
            if meter is not None and meter.formula == "last":
                parts = [counted]
                latest = max(counted, key=_latest)
                values = [(latest[_VALUE], latest[_STAMP])]
            else:
                total = sum(map(_value_of, counted))
                if -_VALUE_LIMIT < total < _VALUE_LIMIT:
                    parts = [counted]
                    values = [(total, key[3])]
                else:
                    parts = _sum_parts(counted)
                    values = [(sum(map(_value_of, part)), key[3]) for part in parts]
            for index, part in enumerate(parts):
                value, stamp = values[index]
                event = self._aggregate(state, block, key, index, value=value, stamp=stamp)
                members = group if len(parts) == 1 else part
                if len(parts) > 1 and index == 0:
                    members = part + [c for c in group if not c[_COUNTED]]
                carrier = AggregateRecord(
                    state,
                    event["identifier"],
                    list(map(_record_of, members)),
                    list(map(_event_of, members)),
                )
                events.append((event, carrier))
            summed[key[1]] = summed.get(key[1], 0) + len(group)
            made[key[1]] = made.get(key[1], 0) + len(parts)
        for name, count in summed.items():  # once per name: labels() is not cheap
            metrics.AGGREGATED_RECORDS.labels(name).inc(count)
            metrics.AGGREGATE_EVENTS.labels(name).inc(made[name])
        direct, block.direct = block.direct, []
        block.groups = {}
        block.seen = {}
        return Started(events, direct, resolved)

    def _aggregate(
        self,
        state: PartitionOffsets,
        block: Block,
        key: AggregateKey,
        part: int,
        *,
        value: int,
        stamp: str,
    ) -> MeterEventBody:
        """One aggregate event: ``value`` at ``stamp``, its identifier from the block and key."""
        account, name, rest, bucket = key
        value_key = self._value_keys.get(name, self._value_key)
        identity = [state.topic, state.partition, block.start, account, name, rest, bucket, part]
        payload = dict(rest)
        payload[value_key] = str(value)
        return {
            "event_name": name,
            "identifier": hashed(orjson.dumps(identity).decode()),
            "timestamp": stamp,
            "payload": payload,
        }

    # -- commits ------------------------------------------------------------------------------

    def metadata(self, state: PartitionOffsets, position: int) -> str:
        """Commit metadata for ``position``: the started block's range when it starts there."""
        entry = self._partitions.get((state.topic, state.partition))
        if entry is None or not entry.blocks:
            return ""
        head = entry.blocks[0]
        if head.started and head.start == position:
            return head.range().encode()
        return ""

    def in_flight(self, state: PartitionOffsets) -> bool:
        """Whether a started block of this partition still waits for answers."""
        entry = self._partitions.get((state.topic, state.partition))
        if entry is None or not entry.blocks:
            return False
        head = entry.blocks[0]
        return head.started and not _resolved(state, head)

    def blocks_of(self, state: PartitionOffsets) -> Iterable[Block]:
        """The partition's blocks, oldest first (for tests and diagnostics)."""
        entry = self._partitions.get((state.topic, state.partition))
        return tuple(entry.blocks) if entry is not None else ()


def _at_bound(blocks: deque[Block]) -> bool:
    """Two blocks in memory and the newer one closed: a third would have to open."""
    return len(blocks) >= 2 and blocks[-1].closed


def _resolved(state: PartitionOffsets, block: Block) -> bool:
    position = state.position()
    return position is not None and position > block.last


_offset_of: Callable[[Contribution], int] = itemgetter(_OFFSET)
_value_of: Callable[[Contribution], int] = itemgetter(_VALUE)
_event_of: Callable[[Contribution], MeterEventBody] = itemgetter(_EVENT)
_record_of: Callable[[Contribution], PendingRecord] = itemgetter(_RECORD)


def _latest(contribution: Contribution) -> tuple[str, int]:
    # Wire timestamps are fixed-width UTC text: text order is time order.
    return (contribution[_STAMP], contribution[_OFFSET])


def _recounted(
    groups: dict[AggregateKey, list[Contribution]],
) -> dict[AggregateKey, list[Contribution]]:
    """Groups in offset order with ``counted`` decided by offset (the first occurrence of an
    identifier counts), for blocks whose records arrived out of order."""
    first: dict[str, int] = {}
    for group in groups.values():
        for c in group:
            identifier = c[_EVENT]["identifier"]
            seen = first.get(identifier)
            if seen is None or c[_OFFSET] < seen:
                first[identifier] = c[_OFFSET]
    return {
        key: [
            (c[0], c[1], c[2], c[3], c[4], first[c[_EVENT]["identifier"]] == c[_OFFSET])
            for c in sorted(group, key=_offset_of)
        ]
        for key, group in groups.items()
    }


def _sum_parts(counted: list[Contribution]) -> list[list[Contribution]]:
    """Offset-ordered runs whose sums stay within Stripe's 15 digits."""
    parts: list[list[Contribution]] = [[]]
    total = 0
    for c in counted:
        if parts[-1] and abs(total + c[_VALUE]) >= _VALUE_LIMIT:
            parts.append([])
            total = 0
        parts[-1].append(c)
        total += c[_VALUE]
    return parts
