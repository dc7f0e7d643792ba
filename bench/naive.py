"""The naive way: what a user would write by hand, for comparison.

One consumer; take up to 100 records, build the meter events, POST them synchronously with
httpx, commit, repeat. Correct (it commits after success) but serial: every request's
latency is paid in full. Run as ``python -m bench.naive BOOTSTRAP TOPIC RECORDS BASE_URL
SECONDS``; it stops after RECORDS or SECONDS (its rate is steady, so a time-boxed window
measures it) and prints one JSON line of figures.
"""

from __future__ import annotations

import sys
import time
import uuid

import httpx
import orjson
from confluent_kafka import Consumer

#: Stripe's limit per request.
BATCH = 100
API_KEY = "sk_test_bench_naive"


def _session(client: httpx.Client, base_url: str) -> str:
    answer = client.post(
        f"{base_url}/v2/billing/meter_event_session",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    answer.raise_for_status()
    token: str = answer.json()["authentication_token"]
    return token


def main(argv: list[str]) -> int:
    bootstrap, topic, records, base_url = argv[0], argv[1], int(argv[2]), argv[3]
    budget = float(argv[4])
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-naive-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    client = httpx.Client(timeout=30)
    token = _session(client, base_url)
    sent = 0
    latencies: list[float] = []
    # Timed from the first record, like the ceiling and meterstream (not the group join).
    started: float | None = None
    cpu_started = time.process_time()
    while sent < records and (started is None or time.monotonic() - started < budget):
        messages = [m for m in consumer.consume(BATCH, 1.0) if m.error() is None]
        if not messages:
            continue
        if started is None:
            started = time.monotonic()
        events = []
        for message in messages:
            record = orjson.loads(message.value())
            events.append(
                {
                    "event_name": record["event_name"],
                    "identifier": record["id"],
                    "timestamp": record["timestamp"],
                    "payload": {
                        "stripe_customer_id": record["customer"],
                        "value": str(record["value"]),
                    },
                }
            )
        body = orjson.dumps({"events": events})
        while True:
            before = time.monotonic()
            answer = client.post(
                f"{base_url}/v2/billing/meter_event_stream",
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            latencies.append(time.monotonic() - before)
            if answer.status_code == 401:
                token = _session(client, base_url)
                continue
            answer.raise_for_status()
            break
        consumer.commit(asynchronous=False)
        sent += len(events)
    elapsed = time.monotonic() - (started or time.monotonic())
    cpu = time.process_time() - cpu_started
    consumer.close()
    latencies.sort()
    print(
        orjson.dumps(
            {
                "events": sent,
                "seconds": elapsed,
                "cpu_seconds": cpu,
                "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
                "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
            }
        ).decode()
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
