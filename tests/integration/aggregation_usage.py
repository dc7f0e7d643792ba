"""Usage for the aggregation tests: sum, last and count records of a few customers over the
last hours, and what Stripe must bill for them per (meter, customer) and per hour.

Timestamps are computed when a test calls ``usage`` (never at import): the machine may be
busy for minutes between collection and the test.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import orjson

from meterstream_local.emulator import EmulatorServer
from meterstream_local.emulator.meters import parse_meter_spec

HOUR = 3600
SUM, LAST, COUNT = "agg_api_calls", "agg_queue_depth", "agg_logins"
METERS = [
    parse_meter_spec(f"{SUM}:sum"),
    parse_meter_spec(f"{LAST}:last"),
    parse_meter_spec(f"{COUNT}:count"),
]
#: Aggregation on needs the meters list (meters.preflight) and short blocks for tests.
AGGREGATION = {"enabled": True, "bucket_seconds": 60, "max_records": 400, "max_seconds": 1}
METERS_ON = {"preflight": True}


@dataclass
class Expected:
    """What Stripe must hold once every record is billed."""

    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: (meter, customer) -> sum of values (sum), count of records (count).
    totals: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: (meter, customer, hour start) -> billed value in that hour.
    hourly: dict[tuple[str, str, int], int] = field(default_factory=dict)
    #: (customer, hour start) -> the last meter's (timestamp, offset order, value).
    latest: dict[tuple[str, int], tuple[float, int, int]] = field(default_factory=dict)


def usage(count: int, *, customers: int = 6, hours: float = 2.5, seed: int = 16) -> Expected:
    """``count`` records, roughly in time order, ending now; 80 % sum, 10 % last, 10 % count."""
    rng = random.Random(seed)
    now = time.time() - 5
    begin = now - hours * HOUR
    expected = Expected()
    hourly: defaultdict[tuple[str, str, int], int] = defaultdict(int)
    for index in range(count):
        at = begin + (now - begin) * index / count + rng.uniform(-30, 0)
        customer = f"cus_agg{rng.randrange(customers)}"
        draw = rng.random()
        meter = SUM if draw < 0.8 else LAST if draw < 0.9 else COUNT
        value = rng.randint(0, 50)
        body = {
            "id": f"agg-{seed}-{index}",
            "event_name": meter,
            "customer": customer,
            "value": value,
            "timestamp": at,
        }
        expected.records.append((customer.encode(), orjson.dumps(body)))
        hour = int(at // HOUR) * HOUR
        if meter == LAST:
            # Records of one key share a partition, so produce order is offset order.
            current = expected.latest.get((customer, hour))
            if current is None or (at, index) >= current[:2]:
                expected.latest[(customer, hour)] = (at, index, value)
            continue
        billed = value if meter == SUM else 1
        expected.totals[(meter, customer)] += billed
        hourly[(meter, customer, hour)] += billed
    expected.hourly = dict(hourly)
    for (customer, hour), (_at, _index, value) in expected.latest.items():
        expected.hourly[(LAST, customer, hour)] = value
    return expected


def billed_hourly(emulator: EmulatorServer, expected: Expected) -> dict[tuple[str, str, int], int]:
    """What the emulator bills for each (meter, customer, hour) that ``expected`` names."""
    formulas = {SUM: "sum", LAST: "last", COUNT: "count"}
    found: dict[tuple[str, str, int], int] = {}
    for meter, customer, hour in expected.hourly:
        [(_start, _end, value, _has)] = emulator.state.summaries(
            meter, customer, [(hour, hour + HOUR)], formulas[meter]
        )
        found[(meter, customer, hour)] = value
    return found


def billed_totals(emulator: EmulatorServer) -> Counter[tuple[str, str]]:
    """(meter, customer) -> billed sum (sum meters) or count (count meters)."""
    totals: Counter[tuple[str, str]] = Counter()
    for meter, by_customer in emulator.state.totals().items():
        for customer, figures in by_customer.items():
            if meter == SUM:
                totals[(meter, customer)] += figures["sum"]
            elif meter == COUNT:
                totals[(meter, customer)] += figures["count"]
    return totals


def assert_billed_exactly(emulator: EmulatorServer, expected: Expected) -> None:
    """Totals per (meter, customer) and per (meter, customer, hour) are exactly right."""
    totals = billed_totals(emulator)
    wrong = {k: (v, totals.get(k)) for k, v in expected.totals.items() if totals.get(k) != v}
    assert not wrong, f"totals (expected, billed) differ: {list(wrong.items())[:5]}"
    assert set(totals) <= set(expected.totals), set(totals) - set(expected.totals)
    hourly = billed_hourly(emulator, expected)
    wrong_hours = {k: (v, hourly[k]) for k, v in expected.hourly.items() if hourly[k] != v}
    assert not wrong_hours, f"hourly (expected, billed) differ: {list(wrong_hours.items())[:5]}"
