"""Which offsets may be committed: the contiguous resolved prefix of each partition.

Every consumed record becomes a ``PendingRecord`` that counts its outstanding obligations
(events not yet answered by Stripe, a dead-letter write not yet confirmed). A partition's
records are kept in consumption order; the commit position is the offset of the first
record with obligations left, or one past the last record consumed when none are left
(DESIGN 3.1). Concurrent batches may finish in any order: a finished record behind an
unfinished one waits, so a commit never passes an unresolved record.

Kafka offsets may have gaps (compaction, transaction markers), so "contiguous" means
contiguous in consumption order, never ``offset + 1`` arithmetic across records.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class PendingRecord:
    """A consumed record and what must still happen before its offset may be committed."""

    __slots__ = ("dead_lettered", "message", "offset", "partition", "remaining")

    def __init__(self, message: Any, partition: PartitionOffsets, offset: int) -> None:
        #: The confluent_kafka Message (key, value, headers are needed for dead letters).
        self.message = message
        self.partition = partition
        self.offset = offset
        #: Obligations left: events in flight plus an unconfirmed dead-letter write.
        self.remaining = 1
        #: True once a dead-letter write was started, so a record is dead-lettered once.
        self.dead_lettered = False

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

    __slots__ = ("closed", "committed", "last_offset", "partition", "pending", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.pending: deque[PendingRecord] = deque()
        #: Offset of the last record consumed, None until the first.
        self.last_offset: int | None = None
        #: The last position (next offset to read) handed to Kafka as a commit.
        self.committed: int | None = None
        self.closed = False

    def track(self, message: Any, offset: int) -> PendingRecord:
        """Register a newly consumed record; it starts with one obligation."""
        record = PendingRecord(message, self, offset)
        self.pending.append(record)
        self.last_offset = offset
        return record

    def position(self) -> int | None:
        """The commit position: first unresolved offset, or one past the last consumed."""
        pending = self.pending
        while pending and pending[0].remaining <= 0:
            pending.popleft()
        if pending:
            return pending[0].offset
        if self.last_offset is None:
            return None
        return self.last_offset + 1

    def to_commit(self) -> int | None:
        """The position to commit now, or None when it has not advanced since last time."""
        position = self.position()
        if position is None or (self.committed is not None and position <= self.committed):
            return None
        return position

    @property
    def unresolved(self) -> int:
        """How many records still wait (after dropping the resolved prefix)."""
        self.position()
        return sum(1 for record in self.pending if record.remaining > 0)
