"""Aggregation through crashes and a rebalance (issue 16): SIGKILLs at random points of a
run, mid-block included, a second member joining while blocks are in flight, records still
arriving; then every (meter, customer) total and every hourly figure is exactly right.

Kills land while aggregates are being sent (the emulator's account limit keeps a block's
aggregates spread over many requests), so the next owner must re-form a block in doubt
from the commit metadata: the logs must say it did, and Stripe's dedupe absorbs the resends.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from tests.integration.aggregation_usage import METERS, METERS_ON, assert_billed_exactly, usage
from tests.reliability.report import ScenarioRow
from tests.reliability.world import (
    Outgoing,
    WorldFactory,
    letter_headers,
    produce_exactly,
    read_all,
)

pytestmark = pytest.mark.integration

#: A killed member holds its partitions until its session times out: keep that short.
FAST_FAILOVER = {"session.timeout.ms": 3000, "heartbeat.interval.ms": 500}
IDLE = 1.5
RUN_TIMEOUT_SECONDS = 150
#: Small blocks and small requests: many blocks, each sent over several requests.
AGGREGATION = {"enabled": True, "bucket_seconds": 60, "max_seconds": 0.5}


def test_exact_totals_after_sigkills_mid_block_a_joining_member_and_new_records(
    world_factory: WorldFactory, scenario: ScenarioRow
) -> None:
    seed = random.SystemRandom().randrange(2**32)
    scenario.notes = f"seed {seed}"
    rng = random.Random(seed)
    world = world_factory(partitions=4, auto_meters=False, meters=METERS, latency_ms=5)
    expected = usage(6000, customers=8, hours=1.5)
    records = [Outgoing(key, value) for key, value in expected.records]
    produce_exactly(world.bootstrap, world.topic, records[:4000])

    def config_closing_blocks_at(max_records: int) -> Path:
        # Each process closes blocks elsewhere (as a block closed by time or by catching up
        # would): only the range in the commit metadata can make the next owner re-form the
        # same block, and without it Stripe would bill the resent records twice.
        return world.config(
            aggregation={**AGGREGATION, "max_records": max_records},
            meters=METERS_ON,
            batching={"max_events": 20},
            rate_limit={"account_requests_per_second": 10},
            commit={"interval_ms": 300},
            kafka={"consumer": FAST_FAILOVER},
        )

    def kill_after(process_billed: int) -> None:
        world.wait_billed(process_billed, what="billing to progress before a kill")

    first = world.connector(config_closing_blocks_at(300), until_idle=IDLE)
    kill_after(rng.randrange(150, 400))
    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL

    second = world.connector(config_closing_blocks_at(170), until_idle=IDLE)
    kill_after(world.billed_now + rng.randrange(150, 400))
    # A rebalance while blocks are in flight: partitions move to the joiner mid-run.
    joiner = world.connector(config_closing_blocks_at(230), until_idle=IDLE)
    produce_exactly(world.bootstrap, world.topic, records[4000:])
    kill_after(world.billed_now + rng.randrange(150, 400))
    second.signal(signal.SIGKILL)
    assert second.wait(10) == -signal.SIGKILL

    third = world.connector(config_closing_blocks_at(260), until_idle=IDLE)
    kill_after(world.billed_now + rng.randrange(100, 300))
    third.signal(signal.SIGKILL)
    assert third.wait(10) == -signal.SIGKILL

    last = world.connector(config_closing_blocks_at(110), until_idle=IDLE)
    world.wait_exit(joiner, RUN_TIMEOUT_SECONDS)
    world.wait_exit(last, RUN_TIMEOUT_SECONDS)

    assert_billed_exactly(world.emulator, expected)
    letters = [
        letter
        for letter in read_all(world.bootstrap, world.dead_letter_topic)
        if letter_headers(letter).get("meterstream.source.topic") == world.topic
    ]
    assert letters == [], "no record of this run is bad"
    world.assert_all_committed()
    world.assert_no_crash()
    logs = "".join(p.log_path.read_text(errors="replace") for p in world.processes)
    assert "re-forming the block in doubt" in logs, "no kill landed mid-block"
    state = world.emulator.state
    scenario.records_in = len(records)
    scenario.billed = state.events_accepted
    scenario.duplicates_absorbed = state.duplicates
    scenario.faults = 3
    scenario.lost = 0
    scenario.double_billed = 0
    scenario.notes += (
        f"; aggregation: {state.events_accepted} events for {len(records)} records, "
        f"{logs.count('re-forming the block in doubt')} blocks re-formed"
    )
