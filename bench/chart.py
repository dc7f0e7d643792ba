"""The benchmark chart: events/s of each mode under each emulator latency (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODES = (
    ("ceiling", "ceiling (consume + decode)"),
    ("naive", "naive (sync POST, commit)"),
    ("meterstream_workers_1", "meterstream"),
    ("meterstream_workers_2", "meterstream --workers 2"),
)


def draw(results: dict[str, Any], path: Path) -> None:
    """Grouped bars, one group per latency, log scale (naive and ceiling differ by 100x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    figure, axes = plt.subplots(figsize=(9, 4.8), dpi=110)
    width = 0.8 / len(MODES)
    for offset, (key, label) in enumerate(MODES):
        values = [row[key]["events_per_second"] for row in runs]
        xs = [i + (offset - (len(MODES) - 1) / 2) * width for i in range(len(runs))]
        bars = axes.bar(xs, values, width, label=label)
        axes.bar_label(bars, labels=[f"{v / 1000:,.1f}k" for v in values], fontsize=7)
    axes.set_xticks(range(len(runs)), [f"+{row['latency_ms']:g} ms per request" for row in runs])
    axes.set_yscale("log")
    axes.set_ylabel("events (records) per second")
    axes.set_title(
        f"meterstream throughput, {results['records']:,} records, {results['partitions']} "
        f"partitions ({results['machine']}; {results['date']})",
        fontsize=9,
    )
    axes.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
