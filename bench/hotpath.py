"""The connector's CPU per record without Kafka or HTTP: ``python -m bench.hotpath``.

The benchmark (``bench.run``) measures a whole process on a shared machine, where one run
takes a minute and the figure moves with the neighbours' load. This measures, in-process
and in a few seconds, the per-record Python work that figure is made of, with the real
code: ``Worker._ingest`` (decode, map, meter checks, offsets, batching) on real
``confluent_kafka.Message`` objects holding the benchmark's canonical records, then what
each full batch costs once sent (expiry check, the request body, crediting the answer,
the commit position), with the worker's collector settings (``connector.heap``) unless
``--default-gc``. The best of ``--repeat`` rounds is reported in microseconds per record:
CPU time, so a busy machine inflates it less than wall time.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from typing import Any

from confluent_kafka import Message

from connector import heap
from connector.concurrency import FixedConcurrency
from connector.config import MeterstreamConfig
from connector.health import HealthState
from connector.meters import Meter, MeterCatalog
from connector.sink import encode_events
from connector.worker import Worker

TOPIC = "usage"
PARTITIONS = 8
#: Records of one partition in a row: a poll of 1,000 over 8 partitions.
RUN = 125
#: valgrind's count of instructions executed, at the end of its report.
_COLLECTED = re.compile(r"Collected : (\d+)")


class _StandIn:
    """Stands in for Kafka, Stripe and the dead-letter queue: only ``listen`` is called,
    and nothing reaches them."""

    def listen(self, **_callbacks: Any) -> None:
        """Nothing to remember: no request is ever sent."""


def offline_worker(config: MeterstreamConfig, catalog: MeterCatalog) -> Worker:
    """The real Worker with nothing behind it: ingest, batching and the ledger run, nothing
    is consumed or sent (the in-process benchmarks feed it ``Message`` objects)."""
    stand_in: Any = _StandIn()
    return Worker(
        config,
        health=HealthState(max_heartbeat_age=60),
        consumer=stand_in,
        delivery=stand_in,
        limit=FixedConcurrency(64),
        sessions=stand_in,
        dlq=stand_in,
        catalog=catalog,
    )


def _messages(count: int, run: int = RUN) -> list[Message]:
    """The benchmark's records over ``PARTITIONS`` partitions, in runs of ``run`` records of
    one partition, as librdkafka hands out what one fetch brought."""
    from meterstream_local import samples

    generated = samples.generate(count, bad_every=0, customers=200)
    now_ms = int(time.time() * 1000)
    return [
        Message(
            topic=TOPIC,
            partition=(index // run) % PARTITIONS,
            offset=(index // (run * PARTITIONS)) * run + index % run,
            key=key,
            value=value,
            timestamp=(1, now_ms),
        )
        for index, (key, value, _) in enumerate(generated)
    ]


def _worker() -> Worker:
    from meterstream_local import samples

    config = MeterstreamConfig.model_validate(
        {
            "kafka": {"topics": [TOPIC], "dead_letter_topic": f"{TOPIC}.dlq"},
            "stripe": {"api_key": "sk_test_hotpath"},
            "metrics": {"enabled": False},
        }
    )
    catalog = MeterCatalog(
        Meter(
            id=f"mtr_{name}",
            event_name=name,
            status="active",
            formula="sum",
        )
        for name, _low, _high in samples.METERS
    )
    return offline_worker(config, catalog)


def _round(messages: list[Message], poll: int) -> tuple[float, float]:
    """CPU seconds of (ingest, sent batches) for one pass over ``messages``."""
    worker = _worker()
    worker._ledger.assign((TOPIC, p) for p in range(PARTITIONS))
    batcher = worker._batcher
    ingest = sent = 0.0
    for start in range(0, len(messages), poll):
        began = time.process_time()
        worker._ingest(messages[start : start + poll])
        batches = batcher.due(force=True)
        middle = time.process_time()
        for batch in batches:
            live = batch.drop_closed()
            min(event["timestamp"] for event in live.events)
            encode_events(live.events)
            worker._accepted(live, None)
        worker._ledger.positions()
        sent += time.process_time() - middle
        ingest += middle - began
    if worker._ledger.held:
        raise SystemExit("records left unresolved: the measurement is wrong")
    return ingest, sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--records", type=int, default=100_000, help="default 100,000")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best is kept")
    parser.add_argument("--poll", type=int, default=1000, help="records per poll (1000)")
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's collector settings instead of the worker's (connector.heap)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per record under valgrind instead of timing: the same on a "
        "busy machine and a quiet one (slow: use --records 20000)",
    )
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.instructions:
        return _count_instructions(args.records, args.poll)
    messages = _messages(args.records)
    if not args.default_gc:
        heap.tune_for_streaming()  # as the worker does before its loop
    if args.setup_only:
        return 0
    best: tuple[float, float] | None = None
    for _ in range(args.repeat):
        figures = _round(messages, args.poll)
        if best is None or sum(figures) < sum(best):
            best = figures
    assert best is not None
    ingest, sent = (1e6 * seconds / args.records for seconds in best)
    print(
        f"{args.records:,} records, best of {args.repeat}: {ingest + sent:.2f} us CPU per record "
        f"(ingest {ingest:.2f}, sent batches {sent:.2f})"
    )
    return 0


def _count_instructions(records: int, poll: int) -> int:
    """Instructions per record of one round (ingest and sent batches): valgrind's count for
    a process that runs the round, minus one that only sets it up, over ``records``.

    Timing moves by a third with the neighbours' load on a shared machine; the count of
    instructions does not, so it judges a change to the hot path by itself."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind not found: apt-get install valgrind", file=sys.stderr)
        return 2

    def collected(*extra: str) -> int:
        command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        command += [sys.executable, "-m", "bench.hotpath", "--records", str(records)]
        command += ["--repeat", "1", "--poll", str(poll), *extra]
        finished = subprocess.run(command, capture_output=True, text=True, check=True)
        found = _COLLECTED.search(finished.stderr)
        if found is None:
            raise SystemExit(f"no instruction count in valgrind's output: {finished.stderr}")
        return int(found.group(1))

    per_record = (collected() - collected("--setup-only")) / records
    print(
        f"{records:,} records: {per_record:,.0f} instructions per record (ingest and sent batches)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
