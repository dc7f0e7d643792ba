"""The benchmark charts (PNG): ``draw`` puts every figure of ``make bench`` in one image
(``bench/results/latest.png``), ``draw_freshness`` the latency histogram. ``python -m
bench.chart`` redraws the first from ``bench/results/latest.json``: ``make bench`` does so
last, once every benchmark has written its part."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

#: CPU-seconds per million events the throughput work aims at (docs/performance.md).
CPU_TARGET = 7.0

MODES = (
    ("ceiling", "ceiling (consume + decode)"),
    ("naive", "naive (sync POST, commit)"),
    ("meterstream_workers_1", "meterstream"),
    ("meterstream_workers_2", "meterstream --workers 2"),
)


def draw(results: dict[str, Any], path: Path) -> None:
    """Every figure of ``make bench`` in one PNG: events/s per mode and latency (log
    scale: naive and ceiling differ by 100x), CPU-seconds per million events, and, once
    their benchmarks have written them, freshness against its target and the adaptive
    fleet's share of the account limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(2, 2, figsize=(12, 8.5), dpi=100)
    _throughput(panels[0][0], results)
    _cpu(panels[0][1], results)
    _freshness_p99(panels[1][0], results.get("freshness"))
    _adaptive(panels[1][1], results.get("adaptive"))
    figure.suptitle(
        f"meterstream benchmark, {results['records']:,} records, {results['partitions']} "
        f"partitions ({results['machine']}; {results['date']})",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _throughput(axes: Any, results: dict[str, Any]) -> None:
    _bars_per_latency(axes, results["runs"], MODES, "events_per_second", "{:,.0f}")
    axes.set_yscale("log")
    axes.set_ylim(top=axes.get_ylim()[1] * 6)  # room for the legend above the bars
    axes.set_ylabel("events (records) per second")
    axes.set_title("throughput", fontsize=9)
    axes.legend(fontsize=7, loc="upper center", ncol=2)


def _cpu(axes: Any, results: dict[str, Any]) -> None:
    _bars_per_latency(axes, results["runs"], MODES, "cpu_seconds_per_million", "{:.1f}")
    axes.axhline(CPU_TARGET, color="black", linestyle="--", linewidth=0.8)
    axes.annotate(f"target {CPU_TARGET:g}", (-0.45, CPU_TARGET), fontsize=7, va="bottom")
    axes.set_ylabel("CPU-seconds per million events")
    axes.set_title("CPU per event (process tree, start-up included)", fontsize=9)
    axes.legend(fontsize=7, loc="upper left")


def _bars_per_latency(
    axes: Any, runs: list[dict[str, Any]], modes: tuple[tuple[str, str], ...], key: str, fmt: str
) -> None:
    """One group of bars per emulator latency, one bar per mode, each labelled."""
    width = 0.8 / len(modes)
    for offset, (mode, label) in enumerate(modes):
        values = [row[mode][key] for row in runs]
        xs = [i + (offset - (len(modes) - 1) / 2) * width for i in range(len(runs))]
        bars = axes.bar(xs, values, width, label=label)
        axes.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=7)
    axes.set_xticks(range(len(runs)), [f"+{row['latency_ms']:g} ms per request" for row in runs])


def _measured_runs(
    axes: Any, title: str, figures: dict[str, Any] | None, command: str
) -> list[dict[str, Any]] | None:
    """Title the panel; its runs, or None after saying which command measures them."""
    axes.set_title(title, fontsize=9)
    if not figures or not figures.get("runs"):
        axes.text(0.5, 0.5, f"not measured ({command})", ha="center")
        return None
    runs: list[dict[str, Any]] = figures["runs"]
    return runs


def _freshness_p99(axes: Any, freshness: dict[str, Any] | None) -> None:
    title = "freshness: record timestamp -> accepted"
    runs = _measured_runs(axes, title, freshness, "python -m bench.freshness")
    if freshness is None or runs is None:
        return
    labels = [f"linger {run['linger_ms']} ms" for run in runs]
    xs = range(len(runs))
    for offset, (key, label) in enumerate((("p50_ms", "p50"), ("p99_ms", "p99"))):
        values = [run[key] for run in runs]
        bars = axes.bar([x + (offset - 0.5) * 0.35 for x in xs], values, 0.35, label=label)
        axes.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=7)
    for x, run in zip(xs, runs, strict=True):
        target = run["target_p99_ms"]
        axes.hlines(target, x - 0.4, x + 0.4, color="black", linestyle="--", linewidth=0.8)
        axes.annotate(f"p99 target {target:.0f}", (x - 0.4, target), fontsize=7, va="bottom")
    axes.set_xticks(list(xs), labels)
    axes.set_ylabel(f"ms, at {freshness['rate']:,.0f} records/s")
    axes.legend(fontsize=7, loc="upper right")


def _adaptive(axes: Any, adaptive: dict[str, Any] | None) -> None:
    title = "one account limit R, four processes (after the first 10 s)"
    runs = _measured_runs(axes, title, adaptive, "python -m bench.adaptive")
    if runs is None:
        return
    labels = [
        ("adaptive" if run.get("adaptive") else "fixed 64") + (", kill" if run.get("kill") else "")
        for run in runs
    ]
    xs = range(len(runs))
    shares = [100 * (run.get("fraction_of_limit_after_10s") or 0.0) for run in runs]
    refused = [100 * (run.get("refused_share_after_10s") or 0.0) for run in runs]
    bars = axes.bar([x - 0.18 for x in xs], shares, 0.35, label="accepted, % of R")
    axes.bar_label(bars, labels=[f"{v:.0f}" for v in shares], fontsize=7)
    bars = axes.bar([x + 0.18 for x in xs], refused, 0.35, label="requests refused (429), %")
    axes.bar_label(bars, labels=[f"{v:.1f}" for v in refused], fontsize=7)
    axes.axhline(90, color="black", linestyle="--", linewidth=0.8)
    axes.annotate("target 90 % of R", (-0.45, 90), fontsize=7, va="bottom")
    axes.set_xticks(list(xs), labels, fontsize=8)
    axes.set_ylim(0, 110)
    axes.set_ylabel("%")
    axes.legend(fontsize=7, loc="center right")


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


def main(argv: list[str] | None = None) -> int:
    """Redraw ``latest.png`` from ``latest.json`` (or the JSON file named)."""
    path = Path((argv if argv is not None else sys.argv[1:] or ["bench/results/latest.json"])[0])
    if not path.exists():
        print(f"no {path}: run `make bench` first", file=sys.stderr)
        return 2
    chart = path.with_suffix(".png")
    draw(orjson.loads(path.read_bytes()), chart)
    print(f"wrote {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
