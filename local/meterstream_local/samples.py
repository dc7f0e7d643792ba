"""Realistic sample usage for the demo, tests and benchmarks, with the totals it should bill.

Records follow the canonical usage record (schemas/usage-record.schema.json). A small,
deterministic share of bad records exercises every local dead-letter reason. ``Expected``
holds what a correct connector must bill: the per (meter, customer) totals of good
records, and the count of bad records by reason.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

#: (event name, typical value range): API calls, LLM tokens, storage GB-hours.
METERS: tuple[tuple[str, int, int], ...] = (
    ("api_requests", 1, 40),
    ("llm_tokens", 50, 4000),
    ("storage_gb_hours", 1, 12),
)
REGIONS = ("eu-west-1", "us-east-1", "ap-southeast-2")


def emulator_meter_args() -> list[str]:
    """``meterstream emulator`` flags declaring a sum meter for every sample event name, so
    the connector's meter preflight finds them before the first event arrives."""
    return [arg for name, _low, _high in METERS for arg in ("--meter", name)]


@dataclass
class Expected:
    """What a correct run bills and dead-letters for the records produced."""

    totals: Counter[tuple[str, str]] = field(default_factory=Counter)  # (meter, customer)
    events: int = 0
    bad: Counter[str] = field(default_factory=Counter)  # reason -> count

    @property
    def records(self) -> int:
        """All records produced, good and bad."""
        return self.events + sum(self.bad.values())


def customer_ids(count: int) -> list[str]:
    """Stable Stripe-looking customer ids."""
    return [f"cus_demo{index:05d}" for index in range(count)]


def _bad_record(rng: random.Random, index: int, customer: str, now: float) -> tuple[bytes, str]:
    kind = index % 6
    if kind == 0:
        return b'{"id": "broken-' + str(index).encode() + b'", "customer": ', "invalid_json"
    if kind == 1:
        return orjson.dumps(["not", "an", "object"]), "schema_violation"
    if kind == 2:
        record = {"id": f"bad-{index}", "event_name": "api_requests", "value": 3}
        return orjson.dumps(record), "mapping_error"
    if kind == 3:
        record = {
            "id": f"bad-{index}",
            "customer": customer,
            "event_name": "api_requests",
            "value": "2.5",
        }
        return orjson.dumps(record), "invalid_value"
    if kind == 4:
        record = {
            "id": f"bad-{index}",
            "customer": customer,
            "event_name": "llm_tokens",
            "value": 10**16,
        }
        return orjson.dumps(record), "invalid_value"
    record = {
        "id": f"bad-{index}",
        "customer": customer,
        "event_name": "storage_gb_hours",
        "value": 1,
        "timestamp": int(now - 40 * 86400),
    }
    return orjson.dumps(record), "timestamp_out_of_range"


def generate(
    count: int,
    *,
    customers: int = 40,
    bad_every: int = 97,
    seed: int = 7,
    now: float | None = None,
    id_prefix: str = "rec",
) -> Iterator[tuple[bytes, bytes, Expected]]:
    """Yield (key, value, expected-so-far) for ``count`` records; key is the customer id.

    Every ``bad_every``-th record is bad (0 disables them). ``expected`` is one object,
    updated as records are yielded: read it after the generator is exhausted.
    """
    rng = random.Random(seed)
    names = customer_ids(customers)
    now = time.time() if now is None else now
    expected = Expected()
    for index in range(count):
        customer = names[rng.randrange(customers)]
        if bad_every and index % bad_every == bad_every - 1:
            value, reason = _bad_record(rng, index // bad_every, customer, now)
            expected.bad[reason] += 1
            yield customer.encode(), value, expected
            continue
        meter, low, high = METERS[rng.randrange(len(METERS))]
        amount = rng.randint(low, high)
        record = {
            "id": f"{id_prefix}-{index}",
            "customer": customer,
            "event_name": meter,
            "value": amount,
            "timestamp": _rfc3339(now - rng.uniform(0, 3600)),
            "region": REGIONS[index % len(REGIONS)],
        }
        expected.totals[(meter, customer)] += amount
        expected.events += 1
        yield customer.encode(), orjson.dumps(record), expected


def _rfc3339(epoch: float) -> str:
    whole = int(epoch)
    millis = int((epoch - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"
