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


def draw_freshness(results: dict[str, Any], path: Path) -> None:
    """Record timestamp -> accepted by Stripe: a histogram per linger setting (PNG), from
    the emulator's cumulative buckets, with each setting's p99 and target marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.8), dpi=110)
    runs = results["runs"]
    width = 0.8 / max(len(runs), 1)
    labels: list[str] = []
    for offset, run in enumerate(runs):
        finite = [b for b in run["histogram"] if b["le"] != "+Inf"]
        total = max(run["histogram"][-1]["count"], 1)
        shares, previous = [], 0
        for bucket in finite:
            shares.append(100 * (bucket["count"] - previous) / total)
            previous = bucket["count"]
        # Up to the first bucket above the largest lag: the tail of seconds is empty.
        last = next((i for i, b in enumerate(finite) if b["count"] >= total), len(finite) - 1)
        shares = shares[: last + 1]
        if len(shares) > len(labels):
            labels = [f"≤{1000 * float(b['le']):g}" for b in finite[: last + 1]]
        xs = [i + (offset - (len(runs) - 1) / 2) * width for i in range(len(shares))]
        axes.bar(
            xs,
            shares,
            width,
            label=(
                f"linger {run['linger_ms']} ms: p50 {run['p50_ms']:.0f}, p99 {run['p99_ms']:.0f}, "
                f"max {run['max_ms']:.0f} ms (target p99 ≤ {run['target_p99_ms']:.0f})"
            ),
        )
    axes.set_xticks(range(len(labels)), labels, fontsize=7, rotation=45)
    axes.set_xlabel("record timestamp -> accepted by Stripe, ms (bucket upper bound)")
    axes.set_ylabel("% of events")
    axes.set_title(
        f"meterstream freshness, {results['rate']:,.0f} records/s for {results['seconds']:g} s "
        f"({results['machine']}; {results['date']})",
        fontsize=9,
    )
    axes.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
