"""A block's offset range, written into the commit metadata of its partition.

Before the first aggregate of a block is sent, the partition's offset is committed at the
block's first offset with this text as the commit's metadata (docs/aggregation.md). Whoever
owns the partition next reads it back with the committed offset and re-forms exactly that
block, so every aggregate, and with it every identifier, comes out the same.

Format: ``meterstream.block/1 <start> <end>``, ``end`` exclusive. Anything else (empty,
another tool's text, a range that does not start at the committed offset because someone
reset the group's offsets) means "no block in doubt here": blocks form afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "meterstream.block/1"


@dataclass(frozen=True, slots=True)
class BlockRange:
    """Offsets ``start`` (first record) up to ``end`` (exclusive) of one partition."""

    start: int
    end: int

    def encode(self) -> str:
        """The commit metadata text."""
        return f"{PREFIX} {self.start} {self.end}"

    @classmethod
    def decode(cls, metadata: str | None, committed: int) -> BlockRange | None:
        """The block in doubt at ``committed``, or None when the metadata names none."""
        if not metadata or not metadata.startswith(PREFIX + " "):
            return None
        parts = metadata[len(PREFIX) + 1 :].split(" ")
        if len(parts) != 2 or not all(part.isdigit() for part in parts):
            return None
        start, end = int(parts[0]), int(parts[1])
        if start != committed or end <= start:
            return None
        return cls(start, end)
