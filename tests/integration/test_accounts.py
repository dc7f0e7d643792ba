"""Connected accounts end to end: one topic holding several accounts' usage, billed by
``meterstream run`` against the real broker and the emulator, each account exactly, no
event in another account (the platform included), each account's sessions renewed on
their own, its meters checked on its own, ``reconcile`` comparing per account, and its
dead letters replayed into it. One connector run serves every assertion."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from meterstream_local.emulator import EmulatorServer, Meter
from tests.integration.harness import (
    headers_of,
    produce,
    read_topic,
    run_meterstream,
    write_config,
)
from tests.integration.test_connector import World, world_factory  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

ACCOUNTS = ("acct_1Alpha", "acct_1Bravo", "acct_1Charlie")
#: Only Alpha has a ``searches`` meter: Bravo's searches have no meter in Bravo.
SEARCHES_ACCOUNT = "acct_1Alpha"
CHECKS_ON = {"preflight": True, "refresh_seconds": 60}
ENV = {"STRIPE_API_KEY": "sk_test_accounts"}


def _iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _records() -> tuple[list[tuple[bytes, bytes]], dict[str, Counter[tuple[str, str]]]]:
    """Interleaved usage of three accounts plus bad routing; the totals each must hold."""
    records: list[tuple[bytes, bytes]] = []
    expected: dict[str, Counter[tuple[str, str]]] = {a: Counter() for a in ACCOUNTS}
    for i in range(450):
        account = ACCOUNTS[i % 3]
        customer = f"cus_{i % 4}"
        value = 1 + i % 7
        body = {
            "id": f"use-{i}",
            "customer": customer,
            "event_name": "api_requests",
            "value": value,
            "tenant": {"stripe_account": account},
        }
        expected[account][("api_requests", customer)] += value
        records.append((customer.encode(), orjson.dumps(body)))
    for i in range(20):  # searches: a meter in Alpha only
        account = SEARCHES_ACCOUNT if i % 2 else "acct_1Bravo"
        body = {
            "id": f"search-{i}",
            "customer": "cus_0",
            "event_name": "searches",
            "value": 3,
            "tenant": {"stripe_account": account},
        }
        if account == SEARCHES_ACCOUNT:
            expected[account][("searches", "cus_0")] += 3
        records.append((b"cus_0", orjson.dumps(body)))
    for i, tenant in enumerate([{}, {"stripe_account": "cus_0"}, {"stripe_account": 7}]):
        body = {"id": f"lost-{i}", "customer": "cus_0", "event_name": "api_requests", "value": 1}
        records.append((b"cus_0", orjson.dumps({**body, "tenant": tenant})))
    return records, expected


def _billed(world: World, account: str | None) -> Counter[tuple[str, str]]:
    totals: Counter[tuple[str, str]] = Counter()
    state = world.emulator.account_state(account)
    for event_name, by_customer in state.totals().items():
        for customer, figures in by_customer.items():
            totals[(event_name, customer)] += figures["sum"]
    return totals


def test_each_connected_account_is_billed_exactly_and_alone(
    world_factory: Callable[..., World],  # noqa: F811
    tmp_path: Path,
) -> None:
    world = world_factory(
        partitions=1,
        auto_meters=False,
        session_expire_every=4,  # per account: each renews its own sessions
        meters=[Meter("api_requests")],  # every account starts with it
    )
    world.emulator.add_meter(Meter("searches"), account=SEARCHES_ACCOUNT)
    records, expected = _records()
    assert produce(world.bootstrap, world.topic, records) == len(records)
    config = world.config(
        mapping={"stripe_account": "tenant.stripe_account"},
        meters=CHECKS_ON,
        batching={"max_events": 10, "max_in_flight": 4, "linger_ms": 20},  # many requests
    )

    world.run_until_idle(config)

    for account in ACCOUNTS:
        assert _billed(world, account) == expected[account], account
        stats = world.emulator.stats(account=account)
        assert stats["sessions"]["created"] >= 2, f"{account}: sessions renewed on their own"
        assert stats["sessions"]["expired_responses"] >= 1
    accepted = sum(world.emulator.stats(account=a)["events"]["accepted"] for a in ACCOUNTS)
    assert accepted == 450 + 10  # one event per good record, in its own account only
    # Nothing reached the platform, and the identifier is the record's own id.
    assert world.emulator.state.totals() == {}
    assert world.emulator.state.events_accepted == 0
    assert world.emulator.account_state("acct_1Bravo").seen("use-1")
    assert not world.emulator.account_state("acct_1Alpha").seen("use-1")
    assert sorted(world.emulator.stats()["accounts"]) == sorted(ACCOUNTS)
    world.assert_all_committed()

    letters = read_topic(world.bootstrap, world.dead_letter_topic, expect=13)
    by_reason: Counter[str] = Counter()
    for letter in letters:
        headers = headers_of(letter)
        by_reason[headers["meterstream.reason"]] += 1
        body: dict[str, Any] = orjson.loads(letter.value())
        if body["event_name"] == "searches":
            assert headers["meterstream.reason"] == "no_active_meter"
            assert headers["meterstream.stripe_account"] == "acct_1Bravo"
            assert "connected account acct_1Bravo" in headers["meterstream.message"]
        else:
            assert "meterstream.stripe_account" not in headers
    assert by_reason == Counter({"no_active_meter": 10, "mapping_error": 2, "schema_violation": 1})

    # reconcile compares each account's Kafka totals with that account's meters.
    hour = int(time.time() // 3600) * 3600
    report = tmp_path / "reconcile.json"
    result = run_meterstream(
        "reconcile",
        "--config",
        str(config),
        "--start",
        _iso(hour - 3600),
        "--end",
        _iso(hour + 3600),
        "--json",
        str(report),
        env=ENV,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ACCOUNT")
    compared = {
        (row["account"], row["event_name"], row["customer"]): row["stripe"]
        for row in orjson.loads(report.read_bytes())["rows"]
    }
    assert compared == {
        (account, name, customer): total
        for account, totals in expected.items()
        for (name, customer), total in totals.items()
    }

    # Bravo gets its meter; replay bills Bravo's searches into Bravo, and only there.
    world.emulator.add_meter(Meter("searches"), account="acct_1Bravo")
    result = run_meterstream(
        "replay",
        "--config",
        str(config),
        "--reason",
        "no_active_meter",
        env=ENV,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert _billed(world, "acct_1Bravo")[("searches", "cus_0")] == 30
    assert _billed(world, SEARCHES_ACCOUNT)[("searches", "cus_0")] == 30
    assert world.emulator.state.totals() == {}


def test_check_config_online_leaves_meters_to_each_account(tmp_path: Path) -> None:
    with EmulatorServer(auto_meters=False) as emulator:  # the platform has no meter at all
        config = write_config(
            tmp_path,
            bootstrap="127.0.0.1:9",
            topic="usage",
            dead_letter_topic="usage.dlq",
            group_id="accounts",
            stripe_url=emulator.base_url,
            mapping={"constant_event_name": "gpu_seconds", "stripe_account": "account"},
        )
        routed = run_meterstream("check-config", "--online", "--config", str(config), env=ENV)
        assert routed.returncode == 0, routed.stderr
        assert "each account's meters are checked" in routed.stdout
        assert emulator.stats()["requests"]["by_endpoint"] == {"meters": 1}

        config.write_text(config.read_text().replace("stripe_account: account", ""))
        platform = run_meterstream("check-config", "--online", "--config", str(config), env=ENV)
        assert platform.returncode == 2
        assert "gpu_seconds" in platform.stderr
