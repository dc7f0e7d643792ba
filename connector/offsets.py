"""The offsets ledger: what each consumed record still owes, and what may be committed.

Every consumed record becomes a ``PendingRecord`` that counts its outstanding obligations
(events not yet answered by Stripe, a dead-letter write not yet confirmed). A partition's
records are kept in consumption order; the commit position is the offset of the first
record with obligations left, or one past the last record consumed when none are left
(DESIGN 3.1). Concurrent batches may finish in any order: a finished record behind an
unfinished one waits, so a commit never passes an unresolved record.

Kafka offsets may have gaps (compaction, transaction markers), so "contiguous" means
contiguous in consumption order, never ``offset + 1`` arithmetic across records.

``OffsetLedger`` holds one ``PartitionOffsets`` per assigned partition and counts the
records it *holds*: every record not yet behind the committable position, resolved or not.
That count, not the unresolved one, bounds memory (docs/architecture.md, "Bounded"): when
one record cannot be resolved (the dead-letter topic is unwritable), every record behind
it stays held with its Kafka message, so fetching must pause on held records.

Threads: the ledger is touched only on the event loop thread; commit confirmations from
librdkafka's poll thread reach it through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any


class PendingRecord:
    """A consumed record and what must still happen before its offset may be committed."""

    __slots__ = ("account", "dead_lettered", "message", "offset", "partition", "remaining")

    def __init__(self, message: Any, partition: PartitionOffsets, offset: int) -> None:
        #: The confluent_kafka Message (key, value, headers are needed for dead letters).
        self.message = message
        self.partition = partition
        self.offset = offset
        #: Obligations left: events in flight plus an unconfirmed dead-letter write.
        self.remaining = 1
        #: True once a dead-letter write was started for the record or one of its events.
        self.dead_lettered = False
        #: The connected account its events go to (``mapping.stripe_account``); None: the
        #: platform.
        self.account: str | None = None

    @property
    def resolved(self) -> bool:
        """Posted to Stripe or durably dead-lettered (or its partition was abandoned)."""
        return self.remaining <= 0

    def finish(self, count: int = 1) -> None:
        """``count`` obligations are done (events accepted, a dead letter confirmed)."""
        self.remaining -= count


class PartitionOffsets:
    """Records consumed from one assigned partition, and the position last committed.

    One instance lives exactly as long as one assignment: on revocation it is ``closed``
    and replaced by a fresh one if the partition comes back, so late answers for the old
    assignment can never move the new assignment's commit position.
    """

    __slots__ = (
        "cap",
        "closed",
        "committed",
        "last_message",
        "last_offset",
        "partition",
        "pending",
        "topic",
    )

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.pending: deque[PendingRecord] = deque()
        #: Offset of the last record consumed, None until the first.
        self.last_offset: int | None = None
        #: The last message consumed (its timestamp dates the lag once nothing is held).
        self.last_message: Any = None
        #: The last position (next offset to read) handed to Kafka as a commit.
        self.committed: int | None = None
        self.closed = False
        #: The highest position a commit may name (aggregation: the first unfinished
        #: block's start, docs/aggregation.md); None: no cap.
        self.cap: int | None = None

    def track(self, message: Any, offset: int) -> PendingRecord:
        """Register a newly consumed record; it starts with one obligation."""
        record = PendingRecord(message, self, offset)
        self.pending.append(record)
        self.last_offset = offset
        self.last_message = message
        return record

    def settle(self) -> int:
        """Drop the resolved prefix; return how many records it released."""
        pending = self.pending
        released = 0
        while pending and pending[0].remaining <= 0:
            pending.popleft()
            released += 1
        return released

    def position(self) -> int | None:
        """The commit position: first unresolved offset, or one past the last consumed."""
        self.settle()
        pending = self.pending
        if pending:
            return pending[0].offset
        if self.last_offset is None:
            return None
        return self.last_offset + 1

    def to_commit(self) -> int | None:
        """The position to commit now, or None when it has not advanced since last time."""
        position = self.position()
        if position is not None and self.cap is not None and position > self.cap:
            position = self.cap
        if position is None or (self.committed is not None and position <= self.committed):
            return None
        return position

    @property
    def unresolved(self) -> int:
        """How many records still wait (after dropping the resolved prefix)."""
        self.position()
        return sum(1 for record in self.pending if record.remaining > 0)


Key = tuple[str, int]


class OffsetLedger:
    """Every assigned partition's ``PartitionOffsets``, and how many records they hold.

    ``held`` counts records consumed and not yet passed by their partition's commit
    position; ``on_resolved`` is called whenever a record becomes resolved (the loop waits
    on it to resume fetching or to finish a drain).
    """

    def __init__(self, on_resolved: Callable[[], None] = lambda: None) -> None:
        self.partitions: dict[Key, PartitionOffsets] = {}
        self._on_resolved = on_resolved

    def __len__(self) -> int:
        return len(self.partitions)

    def get(self, topic: str, partition: int) -> PartitionOffsets | None:
        """The open state of an assigned partition, or None (not assigned, handed over)."""
        return self.partitions.get((topic, partition))

    def finish(self, record: PendingRecord, count: int = 1) -> None:
        """``count`` obligations of ``record`` are done (events answered, a letter confirmed)."""
        was_open = record.remaining > 0
        record.remaining -= count
        if was_open and record.remaining <= 0 and not record.partition.closed:
            self._on_resolved()

    def finish_each(self, records: Iterable[PendingRecord]) -> None:
        """One obligation of each of ``records`` is done (a batch was accepted): ``finish``
        for each, with ``on_resolved`` called once at the end rather than per record."""
        resolved = False
        for record in records:
            record.remaining -= 1
            if record.remaining == 0 and not record.partition.closed:
                resolved = True
        if resolved:
            self._on_resolved()

    def refuse(self, record: PendingRecord, write_letter: Callable[[], None]) -> None:
        """An event of ``record`` is refused for good: a dead letter naming that event becomes
        an obligation, and the event itself is answered.

        A fanned-out record with two refused events owes two letters, each naming its event
        (README, "Dead letters"): a letter is what replay bills and what reconcile subtracts,
        so one letter for both would leave the second event unbilled and unaccounted for.
        """
        record.dead_lettered = True
        record.remaining += 1
        write_letter()
        self.finish(record)

    @property
    def held(self) -> int:
        """Records held in memory: unresolved, or resolved behind an unresolved one."""
        total = 0
        for state in self.partitions.values():
            state.settle()
            total += len(state.pending)
        return total

    @property
    def unresolved(self) -> int:
        """Records still owing something, over every assigned partition."""
        return sum(state.unresolved for state in self.partitions.values())

    def assign(self, keys: Iterable[Key]) -> None:
        """Fresh state for newly assigned partitions (a returning partition starts anew)."""
        for topic, partition in keys:
            self.partitions[(topic, partition)] = PartitionOffsets(topic, partition)

    def close(self, state: PartitionOffsets) -> int:
        """Forget a revoked or lost partition; return how many of its records were unresolved.

        Closed, its records' late answers change nothing here, and its letters waiting in
        the dead-letter producer are dropped (the next owner dead-letters them again).
        """
        state.closed = True
        del self.partitions[(state.topic, state.partition)]
        return state.unresolved

    def positions(
        self, states: Iterable[PartitionOffsets] | None = None
    ) -> list[tuple[PartitionOffsets, int]]:
        """Commit positions that advanced since the last commit, per partition."""
        chosen = list(self.partitions.values()) if states is None else states
        return [(state, pos) for state in chosen if (pos := state.to_commit()) is not None]

    def committed(self, key: Key, position: int) -> None:
        """A commit of ``position`` was handed to Kafka for ``key``."""
        state = self.partitions.get(key)
        if state is not None:
            state.committed = position

    def commit_failed(self, key: Key) -> None:
        """Kafka refused a commit for ``key``: the next commit sends the position again."""
        state = self.partitions.get(key)
        if state is not None:
            state.committed = None
