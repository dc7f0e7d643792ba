"""The ceiling: how fast Python can read these records at all (batch consume + JSON decode).

No mapping, no HTTP, no commits: whatever meterstream does costs at least this. Run as
``python -m bench.ceiling BOOTSTRAP TOPIC RECORDS``; prints one JSON line of figures.
"""

from __future__ import annotations

import sys
import time
import uuid

import orjson
from confluent_kafka import Consumer

#: The same batch size meterstream polls with by default (kafka.poll_max_records).
BATCH = 1000


def main(argv: list[str]) -> int:
    bootstrap, topic, records = argv[0], argv[1], int(argv[2])
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-ceiling-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen = decoded = 0
    started = first = None
    cpu_started = time.process_time()
    started = time.monotonic()
    while seen < records:
        for message in consumer.consume(BATCH, 1.0):
            if message.error() is not None:
                continue
            if first is None:
                first = time.monotonic()
            seen += 1
            if isinstance(orjson.loads(message.value()), dict):
                decoded += 1
    elapsed = time.monotonic() - (first or started)
    cpu = time.process_time() - cpu_started
    consumer.close()
    print(
        orjson.dumps(
            {"records": seen, "decoded": decoded, "seconds": elapsed, "cpu_seconds": cpu}
        ).decode()
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
