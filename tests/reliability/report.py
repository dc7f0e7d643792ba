"""The reliability report: one row per scenario, collected over a test session, written once.

Each scenario (a fault test, a hostile-input batch) fills a ``ScenarioRow`` with what went
in and what came out; the session writes them all to ``.meterstream/reliability/`` as
``reliability-report.json`` (for machines and the issue note) and ``reliability-report.txt``
(the same table, for people). A row is written whether its test passed or failed: a
failing run's figures are the ones worth reading.

Columns, as the issue asks:

    records in           records produced to the source topic
    billed               distinct events Stripe (the emulator) accepted
    dead-lettered        distinct source records found in the dead-letter topic
    dup. absorbed        resends Stripe dropped because it had seen the identifier
    lost                 good records never billed + bad records never dead-lettered (0)
    double-billed        events accepted beyond the good records' identifiers (0)
    recovery s           seconds from the fault ending to billing resuming (worst case)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: Where the report goes (gitignored); METERSTREAM_RELIABILITY_DIR overrides it.
DEFAULT_DIRECTORY = REPO / ".meterstream" / "reliability"
JSON_NAME = "reliability-report.json"
TEXT_NAME = "reliability-report.txt"


@dataclass
class ScenarioRow:
    """The figures of one scenario; ``None`` where a figure does not apply."""

    scenario: str
    records_in: int = 0
    billed: int = 0
    dead_lettered: int = 0
    duplicates_absorbed: int = 0
    lost: int | None = None
    double_billed: int | None = None
    #: Worst recovery over the scenario's faults (seconds); None: no fault with an end.
    recovery_seconds: float | None = None
    #: Every fault's recovery, in order (the worst is ``recovery_seconds``).
    recoveries: list[float] = field(default_factory=list)
    #: How many times the fault was injected.
    faults: int = 0
    #: Peak resident memory of the connector while the fault lasted (MB), where measured.
    peak_rss_mb: float | None = None
    #: What "recovered" means here when it is not "billing resumed", and anything notable.
    notes: str = ""
    outcome: str = "unknown"
    duration_seconds: float = 0.0

    def add_recovery(self, seconds: float) -> None:
        """Record one fault's recovery time."""
        self.recoveries.append(round(seconds, 3))
        self.recovery_seconds = max(self.recoveries)


@dataclass
class ReliabilityReport:
    """Every scenario row of a session, in the order the scenarios finished."""

    rows: list[ScenarioRow] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def add(self, row: ScenarioRow) -> None:
        self.rows.append(row)

    def to_json(self) -> dict[str, Any]:
        failed = [row.scenario for row in self.rows if row.outcome != "passed"]
        return {
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "session_seconds": round(time.time() - self.started, 1),
            "scenarios": len(self.rows),
            "all_passed": not failed,
            "failed": failed,
            "totals": {
                "records_in": sum(row.records_in for row in self.rows),
                "billed": sum(row.billed for row in self.rows),
                "dead_lettered": sum(row.dead_lettered for row in self.rows),
                "duplicates_absorbed": sum(row.duplicates_absorbed for row in self.rows),
                "lost": sum(row.lost or 0 for row in self.rows),
                "double_billed": sum(row.double_billed or 0 for row in self.rows),
            },
            "rows": [asdict(row) for row in self.rows],
        }

    def table(self) -> str:
        """The rows as a fixed-width text table (rich, rendered without colour)."""
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title="meterstream reliability", title_justify="left")
        table.add_column("scenario", overflow="fold")
        for name in ("records in", "billed", "dead-lettered", "dup. absorbed"):
            table.add_column(name, justify="right")
        for name in ("lost", "double-billed", "faults", "recovery s", "peak RSS MB", "outcome"):
            table.add_column(name, justify="right")
        for row in self.rows:
            table.add_row(
                Text(row.scenario),  # not markup: "[all_503]" is a test id, not a style
                f"{row.records_in:,}",
                f"{row.billed:,}",
                f"{row.dead_lettered:,}",
                f"{row.duplicates_absorbed:,}",
                _figure(row.lost),
                _figure(row.double_billed),
                str(row.faults or "-"),
                "-" if row.recovery_seconds is None else f"{row.recovery_seconds:.2f}",
                "-" if row.peak_rss_mb is None else f"{row.peak_rss_mb:.0f}",
                row.outcome,
            )
        console = Console(width=160, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
        console.print(table)
        notes = [f"  {row.scenario}: {row.notes}" for row in self.rows if row.notes]
        text = console.export_text()
        console.file.close()
        if notes:
            text += "notes:\n" + "\n".join(notes) + "\n"
        return text

    def write(self, directory: Path | None = None) -> Path:
        """Write the JSON and the text table; return the directory."""
        target = directory or Path(os.environ.get("METERSTREAM_RELIABILITY_DIR", DEFAULT_DIRECTORY))
        target.mkdir(parents=True, exist_ok=True)
        (target / JSON_NAME).write_text(json.dumps(self.to_json(), indent=2) + "\n")
        (target / TEXT_NAME).write_text(self.table())
        return target


def _figure(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
