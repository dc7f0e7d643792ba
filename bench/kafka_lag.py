"""What Kafka alone adds to freshness: record timestamp -> polled by a bare consumer.

``python -m bench.kafka_lag BOOTSTRAP TOPIC`` (started by ``bench.freshness`` beside the
connector, in its own consumer group) polls the topic the way the connector does (wait
for the first record only, then take what librdkafka already fetched) and does nothing
else with the records. Its lag is the part of the connector's lag that neither the
connector nor Stripe causes: the producer's batching, the broker, the fetch, and the
machine's scheduling of all three.

Protocol: a line ``assigned N`` on stdout once the group gave it the partitions (it
reads from the end); on stdin, a line ``from <wall time>`` starts counting records
stamped at or after it (the steady phase); end of input ends the run, and the
distribution is printed as one JSON object on stdout.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime

import orjson
from confluent_kafka import Consumer

#: Longest a poll waits for the first record (the connector's POLL_TIMEOUT_SECONDS).
POLL_TIMEOUT_SECONDS = 0.1


def main(argv: list[str] | None = None) -> int:
    bootstrap, topic = (argv if argv is not None else sys.argv[1:])[:2]
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-kafka-lag-{topic}",
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
        }
    )

    def assigned(_consumer: object, partitions: list[object]) -> None:
        """Tell the benchmark that counting can start (it waits for this line)."""
        sys.stdout.write(f"assigned {len(partitions)}\n")
        sys.stdout.flush()

    consumer.subscribe([topic], on_assign=assigned)
    counting_from = [float("inf")]
    done = threading.Event()
    lags: list[float] = []

    def read_commands() -> None:
        for line in sys.stdin:
            word, _, value = line.strip().partition(" ")
            if word == "from":
                counting_from[0] = float(value)
        done.set()

    threading.Thread(target=read_commands, daemon=True).start()
    parse = datetime.fromisoformat
    while not done.is_set():
        messages = consumer.consume(1000, 0)
        if not messages:
            messages = consumer.consume(1, POLL_TIMEOUT_SECONDS)
            if messages:
                messages.extend(consumer.consume(999, 0))
        now = time.time()
        for message in messages:
            value = message.value()
            if value is None:
                continue
            stamped = parse(orjson.loads(value)["timestamp"]).timestamp()
            if stamped >= counting_from[0]:
                lags.append(now - stamped)
    consumer.close()
    lags.sort()
    count = len(lags)

    def quantile(q: float) -> float:
        return 1000 * lags[min(count - 1, int(q * count))] if count else float("nan")

    summary = {
        "records": count,
        "p50_ms": quantile(0.5),
        "p90_ms": quantile(0.9),
        "p99_ms": quantile(0.99),
        "max_ms": 1000 * lags[-1] if count else float("nan"),
    }
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
