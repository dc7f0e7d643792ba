"""The report of ``meterstream replay``: per reason, letters read, skipped, billed and
dead-lettered again, with an example of each new reason and one summary line
(docs/replay.md, "Output and exit codes")."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class Counts:
    """Letters of one reason: read, skipped, billed, dead-lettered again."""

    read: int = 0
    skipped: int = 0
    billed: int = 0
    again: int = 0

    @property
    def unfinished(self) -> int:
        """Read and selected, but neither billed nor dead-lettered again (yet)."""
        return self.read - self.skipped - self.billed - self.again


@dataclass
class Report:
    """What a run did, per reason; ``problem`` says why it did not finish."""

    dead_letter_topic: str
    group_id: str
    dry_run: bool
    by_reason: dict[str, Counts] = field(default_factory=dict)
    #: (old reason, new reason) -> letters dead-lettered again (or that would be).
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: new reason -> one message, an example of why.
    examples: dict[str, str] = field(default_factory=dict)
    finished: bool = False
    problem: str | None = None
    #: Partitions stopped by --until before their end.
    stopped_by_until: int = 0

    def counts(self, reason: str) -> Counts:
        """The counts of ``reason`` (created on first use)."""
        found = self.by_reason.get(reason)
        if found is None:
            found = self.by_reason[reason] = Counts()
        return found

    def failed(self, old: str, new: str, message: str) -> None:
        """One letter of reason ``old`` was (or would be) dead-lettered again as ``new``."""
        self.counts(old).again += 1
        self.transitions[(old, new)] += 1
        self.examples.setdefault(new, message)

    def lines(self) -> list[str]:
        """The table, the failures by reason with an example, and one summary line."""
        billed_title, again_title = (
            ("WOULD BILL", "WOULD FAIL") if self.dry_run else ("BILLED", "DEAD-LETTERED AGAIN")
        )
        header = ["REASON", "READ", "SKIPPED", billed_title, again_title]
        show_unfinished = not self.finished and not self.dry_run
        if show_unfinished:
            header.append("UNFINISHED")
        rows = [header]
        total = Counts()
        for reason in sorted(self.by_reason):
            counts = self.by_reason[reason]
            for name in ("read", "skipped", "billed", "again"):
                setattr(total, name, getattr(total, name) + getattr(counts, name))
            rows.append(_row(reason, counts, show_unfinished))
        rows.append(_row("total", total, show_unfinished))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            ).rstrip()
            for row in rows
        ]
        for (old, new), count in sorted(self.transitions.items()):
            verb = "would fail as" if self.dry_run else "dead-lettered again as"
            lines.append(f"{old}: {count} {verb} {new}, e.g. {self.examples[new]}")
        lines.append(self._summary(total))
        return lines

    def _summary(self, total: Counts) -> str:
        where = f"{self.dead_letter_topic} as group {self.group_id}"
        if self.dry_run:
            return (
                f"dry run: {total.read} letters read from {where}; {total.billed} would be "
                f"billed, {total.again} would fail, {total.skipped} skipped; nothing sent, "
                "written or committed"
            )
        stopped = ""
        if self.stopped_by_until:
            count = self.stopped_by_until
            stopped = f"; {count} partition{'' if count == 1 else 's'} stopped at --until"
        if self.finished:
            return (
                f"replayed {total.read} letters from {where}: {total.billed} billed, "
                f"{total.again} dead-lettered again, {total.skipped} skipped; committed"
                f"{stopped}"
            )
        why = (self.problem or "stopped").rstrip(".")
        return (
            f"replay did not finish: {why}; {total.billed} billed, {total.again} "
            f"dead-lettered again, {total.skipped} skipped, {total.unfinished} left for the "
            "next run (committed up to the first of them)"
        )


def _row(reason: str, counts: Counts, unfinished: bool) -> list[str]:
    cells = [reason, str(counts.read), str(counts.skipped), str(counts.billed), str(counts.again)]
    if unfinished:
        cells.append(str(counts.unfinished))
    return cells
