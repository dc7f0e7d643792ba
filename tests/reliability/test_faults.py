"""Faults production will meet, each against the real broker and the emulator (issue 6).

Every scenario ends with the same verdict (``ReliabilityWorld.assert_exactly_once``): every
good record billed exactly once (the emulator's accepted identifiers and totals), every bad
record in the dead-letter topic with its reason and original bytes, nothing valid
dead-lettered, the group committed to the end, and no crash in any connector log. Each
fills its row of the reliability report, with how long billing took to resume after each
fault ended.

Fault durations are plain sleeps: how long Stripe stays down *is* the fault. Everything
else waits for an observable condition.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable

import orjson
import pytest

from connector.timestamps import STRIPE_MAX_AGE_SECONDS
from meterstream_local.localkafka import LocalKafka
from tests.integration.harness import ConnectorProcess, free_port, scrape, wait_until
from tests.reliability.report import ScenarioRow
from tests.reliability.world import (
    Outgoing,
    ReliabilityWorld,
    WorldFactory,
    alter_topic_config,
    letter_headers,
    metrics_section,
    not_ready_because,
    read_all,
    readyz,
    wait_ready,
)

pytestmark = pytest.mark.integration


#: A killed member holds its partitions until its session times out: keep that short.
FAST_FAILOVER = {"session.timeout.ms": 3000, "heartbeat.interval.ms": 500}
#: Burst mode's idle time for the runs here (outlasts linger and a commit interval).
IDLE = 1.5
#: Per-process pace for the runs that must still be going when a fault strikes.
PACE = {"account_events_per_second": 2500}


def _seeded(scenario: ScenarioRow) -> random.Random:
    """A random source whose seed is in the report, so a failing run can be replayed."""
    seed = random.SystemRandom().randrange(2**32)
    scenario.notes = f"seed {seed}"
    return random.Random(seed)


#: How many times the connector is SIGKILLed in one run.
KILLS = 5


def test_sigkill_at_random_points_many_times(
    world_factory: WorldFactory, scenario: ScenarioRow
) -> None:
    rng = _seeded(scenario)
    world = world_factory(partitions=4, latency_ms=5)
    world.produce_samples(20_000, bad_every=97)
    config = world.config(
        commit={"interval_ms": 300}, kafka={"consumer": FAST_FAILOVER}, rate_limit=PACE
    )
    for kill in range(1, KILLS + 1):
        started = time.monotonic()
        process = world.connector(config)
        if kill % 2 == 0:
            # Somewhere in start-up: imports, joining the group, the first fetch or batch.
            time.sleep(rng.uniform(0.2, 2.5))
        else:
            # Somewhere in the flow: batches in flight, commits pending, dead letters queued.
            world.wait_billed(world.billed_now + rng.randrange(200, 2500), what=f"kill {kill}")
            if kill > 1:
                scenario.add_recovery(world.progress.resumed_after(started))
        process.signal(signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
        scenario.faults += 1
    assert world.billed_now < len(world.ledger.good), "the kills came mid-run"

    restarted = time.monotonic()
    final = world.connector(config, until_idle=IDLE)
    scenario.add_recovery(world.progress.resumed_after(restarted))
    world.wait_exit(final)

    world.assert_exactly_once()


#: How long the broker stays down (after /readyz has noticed).
BROKER_DOWN_SECONDS = 4.0


def test_broker_stopped_and_restarted_mid_run(
    world_factory: WorldFactory, scenario: ScenarioRow, local_kafka: LocalKafka
) -> None:
    world = world_factory(partitions=4, bootstrap=local_kafka.bootstrap_servers, latency_ms=5)
    world.produce_samples(12_000, bad_every=97)
    port = free_port()
    # A small buffer: with the broker gone, billing runs dry quickly and waits for it.
    config = world.config(
        batching={"max_buffered_records": 500}, rate_limit=PACE, metrics=metrics_section(port)
    )
    process = world.connector(config, until_idle=IDLE)
    world.wait_billed(2000, what="billing before the broker stops")

    local_kafka.stop()  # same data and port when it comes back
    scenario.faults = 1
    problem = wait_until(
        lambda: not_ready_because(port, "kafka"), timeout=60, what="/readyz to blame Kafka"
    )
    assert "Kafka" in problem, problem
    # Not ready for as long as the broker is away, even while records fetched before it
    # went away are still being billed.
    held = time.monotonic() + BROKER_DOWN_SECONDS
    while time.monotonic() < held:
        assert not_ready_because(port, "kafka"), f"ready while the broker is down: {readyz(port)}"
        time.sleep(0.1)
    assert world.billed_now < len(world.ledger.good), "the broker went away mid-run"
    local_kafka.start()
    scenario.add_recovery(world.progress.resumed_after(time.monotonic()))
    wait_ready(port, timeout=60)
    world.wait_exit(process)

    world.assert_exactly_once()


#: How long Stripe stays down (longer than not_ready_after_seconds below).
OUTAGE_SECONDS = 3.0


@pytest.mark.parametrize("how", ["all_503", "connection_refused"])
def test_stripe_down_for_a_while_then_back(
    world_factory: WorldFactory, scenario: ScenarioRow, how: str
) -> None:
    world = world_factory(partitions=4, latency_ms=5)
    # Enough that the run goes on well after Stripe is back (readiness is checked then).
    world.produce_samples(15_000, bad_every=97)
    port = free_port()
    config = world.config(
        rate_limit=PACE,
        delivery={
            "backoff_initial_seconds": 0.05,
            "backoff_max_seconds": 0.5,
            "not_ready_after_seconds": 1.0,
        },
        metrics=metrics_section(port),
    )
    process = world.connector(config, until_idle=IDLE)
    world.wait_billed(2000, what="billing before Stripe goes down")

    if how == "all_503":
        world.emulator.configure(outage=True)
    else:
        world.emulator.stop()  # connection refused; same port and state when it returns
    scenario.faults = 1
    problem = wait_until(
        lambda: not_ready_because(port, "stripe"), timeout=30, what="/readyz to blame Stripe"
    )
    assert ("503" if how == "all_503" else "cannot reach") in problem, problem
    time.sleep(OUTAGE_SECONDS)
    assert world.billed_now < len(world.ledger.good), "Stripe went down mid-run"
    if how == "all_503":
        world.emulator.configure(outage=False)
    else:
        world.emulator.start()
    scenario.add_recovery(world.progress.resumed_after(time.monotonic()))
    wait_ready(port, timeout=30)
    world.wait_exit(process)

    world.assert_exactly_once()  # includes: nothing valid was dead-lettered
    if how == "all_503":
        assert world.answered(503) > 0


#: Length of each 429 storm, and the Retry-After of the first.
STORM_SECONDS = 3.0
STORM_RETRY_AFTER = 1.5


def test_429_storms_with_retry_after(world_factory: WorldFactory, scenario: ScenarioRow) -> None:
    world = world_factory(partitions=4, latency_ms=5)
    world.produce_samples(12_000, bad_every=97)
    in_flight = 8
    # Backoff far below Retry-After: only honouring the header keeps the 429s few.
    config = world.config(
        batching={"max_in_flight": in_flight},
        rate_limit=PACE,
        delivery={"backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2},
    )
    process = world.connector(config, until_idle=IDLE)
    storms = (
        # Every request refused with Retry-After: 1.5.
        {"rate_limit_rate": 1.0, "retry_after_seconds": STORM_RETRY_AFTER},
        # A hard limit of 2 requests/s, Retry-After until the next second.
        {"requests_per_second": 2.0},
    )
    for number, knobs in enumerate(storms, start=1):
        world.wait_billed(2500 * number, what=f"billing before storm {number}")
        before = world.answered(429)
        world.emulator.configure(**knobs)
        scenario.faults += 1
        time.sleep(STORM_SECONDS)
        world.emulator.configure(rate_limit_rate=0.0, requests_per_second=None)
        calm = time.monotonic()
        refused = world.answered(429) - before
        scenario.notes += f"{'; ' if scenario.notes else ''}storm {number}: {refused} x 429"
        assert refused > 0, "the storm refused requests"
        if number == 1:
            # Retry-After honoured, and shared by every request of the process: about one
            # round of in-flight requests per Retry-After period (x2 slack). Backing off
            # by the configured 0.05-0.2 s instead would make it hundreds.
            bound = 2 * (STORM_SECONDS / STORM_RETRY_AFTER + 1) * in_flight
            assert refused <= bound, f"{refused} requests refused in a {STORM_SECONDS} s storm"
        scenario.add_recovery(world.progress.resumed_after(calm))
    assert world.billed_now < len(world.ledger.good), "the storms came mid-run"
    world.wait_exit(process)

    world.assert_exactly_once()


def test_latency_spikes_past_the_request_timeout(
    world_factory: WorldFactory, scenario: ScenarioRow
) -> None:
    world = world_factory(partitions=4, latency_ms=5)
    world.produce_samples(10_000, bad_every=97)
    config = world.config(
        stripe={"request_timeout_seconds": 0.5},
        rate_limit=PACE,
        delivery={"backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.5},
    )
    process = world.connector(config, until_idle=IDLE)
    for spike in range(1, 3):
        world.wait_billed(2500 * spike, what=f"billing before spike {spike}")
        # Every request now takes 1 s, twice the timeout: Stripe (the emulator) still
        # accepts what the connector gave up on, so the resends meet their identifiers.
        resent_before = world.emulator.state.duplicates
        world.emulator.configure(latency_ms=1000)
        scenario.faults += 1
        # The spike lasts until it has done its harm: a request the connector gave up on
        # was accepted late, and its resend met the identifier.
        wait_until(
            lambda: world.emulator.state.duplicates > resent_before,  # noqa: B023
            timeout=30,
            what=f"a timed-out request to be resent during spike {spike}",
        )
        world.emulator.configure(latency_ms=5)
        scenario.add_recovery(world.progress.resumed_after(time.monotonic()))
    world.wait_exit(process)

    verdict = world.assert_exactly_once()
    assert verdict.duplicates > 0, "requests that timed out were accepted late, and resent"


def test_sessions_expiring_every_few_requests(
    world_factory: WorldFactory, scenario: ScenarioRow
) -> None:
    # Every session serves two stream requests and lives two seconds, while up to 32
    # requests share it and answers come back in any order (jitter).
    world = world_factory(
        partitions=4, latency_ms=5, jitter_ms=30, session_max_requests=2, session_ttl_seconds=2.0
    )
    world.produce_samples(10_000, bad_every=97)

    world.run_until_idle(world.config(rate_limit={"account_events_per_second": 4000}))

    world.assert_exactly_once()
    sessions = _session_figures(world, scenario)
    assert sessions["created"] > 20, "sessions really expired and were renewed"


def _session_figures(world: ReliabilityWorld, scenario: ScenarioRow) -> dict[str, int]:
    """The emulator's session counts, into the scenario's row."""
    sessions: dict[str, int] = world.emulator.stats()["sessions"]
    scenario.faults = sessions["expired_responses"]
    scenario.notes = f"{sessions['created']} sessions, {sessions['expired_responses']} refused"
    return sessions


#: How long the dead-letter topic refuses writes: long enough for retries to back off.
DLQ_OUTAGE_SECONDS = 12.0


def test_dead_letter_topic_unwritable_for_a_while(
    world_factory: WorldFactory, scenario: ScenarioRow
) -> None:
    # A real broker refusal: the dead-letter topic takes no message over 1 byte, so every
    # dead-letter write fails (MSG_SIZE_TOO_LARGE) until the limit is lifted.
    world = world_factory(partitions=2, latency_ms=5, dlq_config={"max.message.bytes": "1"})
    world.produce_samples(6000, bad_every=25)
    first_bad = {
        partition: min(offset for p, offset in world.ledger.bad if p == partition)
        for partition in range(world.partitions)
    }
    port = free_port()
    config = world.config(commit={"interval_ms": 200}, metrics=metrics_section(port))
    process = world.connector(config, until_idle=IDLE)
    broken = time.monotonic()
    scenario.faults = 1

    problem = wait_until(
        lambda: not_ready_because(port, "dead_letter"), timeout=60, what="/readyz to blame the DLQ"
    )
    assert world.dead_letter_topic in problem, problem
    # Good records are still billed, but no commit passes the first record that needs a
    # dead letter: each partition's position stops exactly there.
    world.wait_billed(len(world.ledger.good), what="every good record to be billed")
    wait_until(lambda: world.committed() == first_bad, timeout=30, what="commits up to the block")
    # Held for the rest of the outage, checked all along (not only at its end).
    while time.monotonic() - broken < DLQ_OUTAGE_SECONDS:
        assert world.committed() == first_bad, "a commit passed a record whose dead letter failed"
        assert not_ready_because(port, "dead_letter"), "not ready for as long as the DLQ refuses"
        time.sleep(0.2)

    alter_topic_config(world.bootstrap, world.dead_letter_topic, {"max.message.bytes": None})
    fixed = time.monotonic()
    wait_until(
        lambda: any(c > first_bad[p] for p, c in world.committed().items()),
        timeout=120,
        what="commits to move past the block",
    )
    scenario.add_recovery(time.monotonic() - fixed)
    scenario.notes = "recovery: the topic fixed -> the first commit past the block"
    wait_ready(port, timeout=60)
    world.wait_exit(process)

    world.assert_exactly_once()


def nothing_committed_past_the_start(world: ReliabilityWorld) -> bool:
    """No committed offset moved past a record: none, or the start position itself (the
    first position is committed so that ``auto_offset_reset: latest`` cannot skip what was
    consumed but not billed)."""
    return all(offset <= 0 for offset in world.committed().values())


#: A publishable key where a secret key belongs: the classic mistake; Stripe answers 401.
WRONG_API_KEY = "pk_test_51WrongKeyForMeterstream"


def test_wrong_api_key_then_fixed(world_factory: WorldFactory, scenario: ScenarioRow) -> None:
    world = world_factory(partitions=4, latency_ms=5)
    world.produce_samples(5000)
    port = free_port()
    config = world.config(shutdown={"drain_timeout_seconds": 2}, metrics=metrics_section(port))
    wrong = world.connector(config, api_key=WRONG_API_KEY)
    scenario.faults = 1

    problem = wait_until(
        lambda: not_ready_because(port, "stripe"), timeout=60, what="/readyz to blame Stripe"
    )
    assert "401" in problem, problem
    assert "STRIPE_API_KEY" in problem, problem
    wait_until(lambda: world.answered(401) >= 3, timeout=60, what="several refused attempts")
    assert world.billed_now == 0
    assert read_all(world.bootstrap, world.dead_letter_topic) == [], "nothing is dead-lettered"
    assert nothing_committed_past_the_start(world), world.committed()
    wrong.signal(signal.SIGTERM)
    assert wrong.wait(30) == 0, wrong.log_tail()
    assert nothing_committed_past_the_start(world), world.committed()
    log = wrong.log_path.read_text()
    said = [
        line
        for line in log.splitlines()
        if " ERROR " in line and "401" in line and "STRIPE_API_KEY" in line
    ]
    assert said, f"no clear error about the key in the log:\n{log[-2000:]}"
    assert WRONG_API_KEY not in log, "the API key leaked into the log"

    fixed = time.monotonic()
    right = world.connector(config, until_idle=IDLE)
    scenario.add_recovery(world.progress.resumed_after(fixed))
    world.wait_exit(right)

    world.assert_exactly_once()
    scenario.notes = "recovery: restart with the right key -> billing; log: " + said[0][24:140]


def test_rebalances_under_load(world_factory: WorldFactory, scenario: ScenarioRow) -> None:
    world = world_factory(partitions=8, latency_ms=5)
    world.produce_samples(30_000, bad_every=97)
    # Each process paced to 1,500 events/s with a small buffer and a short hand-over
    # budget: the backlog outlasts the churn, and revocations find requests in flight
    # that they must abandon to the next owner.
    config = world.config(
        batching={"max_in_flight": 4, "max_buffered_records": 3000},
        rate_limit={"account_events_per_second": 1500},
        shutdown={"drain_timeout_seconds": 1.0},
        kafka={"consumer": FAST_FAILOVER},
    )
    base = world.connector(config, until_idle=3.0)
    world.wait_billed(1000, what="the first worker to be busy")

    def assigned(process: ConnectorProcess) -> Callable[[], bool]:
        return lambda: f"assigned {world.topic}" in process.log_path.read_text()

    # Joiners come and go: one leaves cleanly, one crashes, two join and leave together,
    # then one more leaves cleanly.
    plan = [(1, signal.SIGTERM), (1, signal.SIGKILL), (2, signal.SIGTERM), (1, signal.SIGTERM)]
    for cycle, (count, leave) in enumerate(plan, start=1):
        joiners = [world.connector(config) for _ in range(count)]
        for joiner in joiners:
            wait_until(assigned(joiner), timeout=60, what=f"cycle {cycle}: joiner assigned")
        scenario.faults += count
        world.wait_billed(world.billed_now + 800, what=f"cycle {cycle}: progress")
        for joiner in joiners:
            joiner.signal(leave)
        for joiner in joiners:
            code = joiner.wait(30)
            assert code == (0 if leave == signal.SIGTERM else -signal.SIGKILL), joiner.log_tail()
        scenario.faults += count
    assert world.billed_now < len(world.ledger.good), "the churn happened mid-run"
    world.wait_exit(base)

    world.assert_exactly_once()


def test_sessions_refused_right_after_renewal(
    world_factory: WorldFactory, scenario: ScenarioRow
) -> None:
    """Every 5th stream request, across all sessions, expires the session it used: with 64
    requests in flight a session made a moment ago is refused on its first use. Stripe's
    trouble, not the data's: nothing valid may be dead-lettered for it."""
    world = world_factory(partitions=4, latency_ms=5, jitter_ms=10, session_expire_every=5)
    world.produce_samples(40_000, bad_every=2500)

    world.run_until_idle(
        world.config(
            batching={"max_in_flight": 64},
            delivery={"backoff_initial_seconds": 0.02, "backoff_max_seconds": 0.5},
        )
    )

    world.assert_exactly_once()  # includes: no valid record dead-lettered
    sessions = _session_figures(world, scenario)
    assert sessions["expired_responses"] > 50, "sessions were really refused, many times"


#: How close to the edge of Stripe's 35-day window the edge records are produced: long
#: enough for a busy machine to consume them before they leave it.
EDGE_SECONDS = 15.0
#: delivery.expiry_margin_seconds for the run.
EXPIRY_MARGIN_SECONDS = 1.0


def test_events_expiring_while_stripe_is_down(
    world_factory: WorldFactory, scenario: ScenarioRow
) -> None:
    """Records a few seconds from the window's edge, and an outage longer than that: they
    are dead-lettered as expired while they wait (at their next attempt, whether it is in
    flight during the outage or queued behind others); everything else is billed once."""
    world = world_factory(partitions=2, latency_ms=5)
    world.emulator.configure(outage=True)
    scenario.faults = 1
    # Computed here, not at import: the edge is "now" when the test runs.
    edge = time.time() - STRIPE_MAX_AGE_SECONDS + EDGE_SECONDS
    expiring = [
        Outgoing(
            None,
            orjson.dumps(
                {
                    "id": f"edge-{n}",
                    "customer": "cus_edge",
                    "event_name": "api_requests",
                    "value": 1,
                    "timestamp": int(edge),
                }
            ),
        )
        for n in range(40)
    ]
    world.produce(expiring, [frozenset({"timestamp_out_of_range"})] * len(expiring))
    world.produce_samples(3000, bad_every=97)
    process = world.connector(
        world.config(
            delivery={
                "backoff_initial_seconds": 0.05,
                "backoff_max_seconds": 0.5,
                "expiry_margin_seconds": EXPIRY_MARGIN_SECONDS,
            }
        ),
        until_idle=IDLE,
    )
    # The outage is the fault: it lasts until the edge records have left the window.
    expired_at = int(edge) + STRIPE_MAX_AGE_SECONDS - EXPIRY_MARGIN_SECONDS
    while time.time() < expired_at + 1.0:
        assert process.proc is not None
        assert process.proc.poll() is None, process.log_tail()
        time.sleep(0.2)
    assert world.billed_now == 0, "Stripe was down all along"
    world.emulator.configure(outage=False)
    scenario.add_recovery(world.progress.resumed_after(time.monotonic()))
    world.wait_exit(process)

    world.assert_exactly_once()  # the edge records dead-lettered, never billed
    messages = {
        letter_headers(letter).get("meterstream.message", "")
        for letter in read_all(world.bootstrap, world.dead_letter_topic)
        if letter.value() and b"edge-" in letter.value()
    }
    assert messages
    assert all("expired while waiting" in message for message in messages), messages


#: The backlog consumed while the dead-letter topic refuses writes, and for how long.
BACKLOG = 200_000
DLQ_BLOCKED_SECONDS = 60.0


def test_dead_letter_topic_unwritable_under_a_large_backlog(
    world_factory: WorldFactory, scenario: ScenarioRow
) -> None:
    """Records resolved behind an unwritable dead letter stay in memory with their Kafka
    messages: they count toward max_buffered_records, fetching pauses, RSS stays flat."""
    import psutil

    bound = 20_000
    world = world_factory(partitions=4, latency_ms=2, dlq_config={"max.message.bytes": "1"})
    world.produce_samples(BACKLOG, bad_every=97)
    port = free_port()
    config = world.config(
        batching={"max_buffered_records": bound},
        commit={"interval_ms": 500},
        metrics=metrics_section(port),
    )
    process = world.connector(config, until_idle=IDLE)
    blocked = time.monotonic()
    scenario.faults = 1
    wait_until(
        lambda: not_ready_because(port, "dead_letter"), timeout=60, what="/readyz to blame the DLQ"
    )
    assert process.proc is not None
    connector = psutil.Process(process.proc.pid)
    samples: list[tuple[float, int, float]] = []  # (time, RSS, buffered records)
    consumed = paused = 0.0
    while time.monotonic() - blocked < DLQ_BLOCKED_SECONDS:
        series = scrape(port)
        buffered = series.get("meterstream_buffered_records", 0.0)
        samples.append((time.monotonic() - blocked, connector.memory_info().rss, buffered))
        consumed = max(
            consumed,
            sum(v for k, v in series.items() if k.startswith("meterstream_records_consumed_total")),
        )
        paused = max(paused, series.get("meterstream_paused_partitions", 0.0))
        time.sleep(0.5)
    alter_topic_config(world.bootstrap, world.dead_letter_topic, {"max.message.bytes": None})
    fixed = time.monotonic()
    world.wait_billed(world.billed_now + 1, what="billing to resume after the fix")
    scenario.add_recovery(time.monotonic() - fixed)
    world.wait_exit(process, timeout=300)

    world.assert_exactly_once()
    peak = max(rss for _t, rss, _b in samples)
    scenario.peak_rss_mb = round(peak / 2**20, 1)
    # Fetching paused: what was consumed during the block is the bound plus the polls in
    # flight when it paused, not the backlog...
    assert paused == world.partitions
    assert consumed <= bound + 2 * 1000, f"consumed {consumed:.0f} of {BACKLOG} while blocked"
    # ...held records stay within the bound (plus one poll fetched before the pause)...
    assert max(b for _t, _rss, b in samples) <= bound + 1000, samples[-5:]
    # ...and memory is flat while the block lasts: the second half adds nothing to the first.
    half = [rss for t, rss, _b in samples if t <= DLQ_BLOCKED_SECONDS / 2]
    late = [rss for t, rss, _b in samples if t > DLQ_BLOCKED_SECONDS / 2]
    assert max(late) - max(half) < 32 * 2**20, f"RSS grew from {max(half)} to {max(late)} bytes"


#: Long enough for a failing dead letter's retry backoff to reach its 5 s cap.
DLQ_BACKOFF_SECONDS = 9.0


def test_dead_letters_confirmed_during_shutdown_are_committed(
    world_factory: WorldFactory, scenario: ScenarioRow
) -> None:
    """SIGTERM right after the dead-letter topic is fixed, while the letter waits out its
    retry backoff: the shutdown sends and flushes it before the final commit, so the next
    owner does not dead-letter the record again."""
    world = world_factory(partitions=1, latency_ms=2, dlq_config={"max.message.bytes": "1"})
    world.produce_samples(300, bad_every=50)
    config = world.config(commit={"interval_ms": 200}, shutdown={"drain_timeout_seconds": 1.0})
    process = world.connector(config)
    world.wait_billed(len(world.ledger.good), what="every good record to be billed")
    # The letters fail again and again; their retry backoff grows to its cap.
    time.sleep(DLQ_BACKOFF_SECONDS)
    first_bad = min(offset for _p, offset in world.ledger.bad)
    assert world.committed() == {0: first_bad}, "held at the first record without a letter"
    alter_topic_config(world.bootstrap, world.dead_letter_topic, {"max.message.bytes": None})
    process.signal(signal.SIGTERM)
    scenario.faults = 1
    assert process.wait(60) == 0, process.log_tail()
    world.assert_exactly_once()  # includes: committed to the end, each letter written once
