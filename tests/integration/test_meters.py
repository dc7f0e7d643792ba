"""Meter preflight against the emulator over loopback: the meters list read page by page,
``check-config --online`` refusing what Stripe would silently drop, and ``preflight()``."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connector.config import load_config
from connector.errors import AuthenticationError, BackoffError, ConfigError
from connector.meters import list_meters, preflight
from tests.integration.harness import run_meterstream, wait_until
from tests.integration.stripe_api import API_KEY, create_meter, deactivate_meter
from tests.integration.test_connector import World, world_factory  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

ENV = {"STRIPE_API_KEY": API_KEY}


def checked(world: World, **sections: Any) -> Path:
    """The world's config with the meter checks on (the harness turns them off)."""
    sections.setdefault("meters", {"preflight": True})
    return world.config(**sections)


def check_online(config: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = run_meterstream("check-config", "--online", "--config", str(config), env=env or ENV)
    return result.returncode, result.stdout, result.stderr


def test_list_meters_reads_every_page_of_both_statuses(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1, auto_meters=False)
    url = world.emulator.base_url
    created = [create_meter(url, f"meter_{index:03d}")["id"] for index in range(230)]
    for meter_id in created[:7]:
        deactivate_meter(url, meter_id)
    config = load_config(
        checked(
            world,
        ),
        environ=ENV,
    )
    requests_before = world.emulator.stats()["requests"]["by_endpoint"]["meters"]

    meters = asyncio.run(list_meters(config.stripe, config.require_api_key()))

    assert sorted(m.id for m in meters) == sorted(created)
    assert sum(not m.active for m in meters) == 7
    requests = world.emulator.stats()["requests"]["by_endpoint"]["meters"] - requests_before
    assert requests == 3  # pages of 100, 100 and 30


def test_check_config_online_refuses_a_constant_event_name_without_a_meter(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1, auto_meters=False)
    create_meter(world.emulator.base_url, "api_requests")
    config = checked(world, mapping={"constant_event_name": "api_calls"})

    code, stdout, stderr = check_online(config)

    assert code == 2, stderr
    assert "Traceback" not in stderr
    [line] = [s for s in stderr.splitlines() if "api_calls" in s]
    assert "mapping.constant_event_name: no_active_meter:" in line
    assert "create the meter in the Dashboard" in line
    assert "api_requests" in stdout, "the meters found are printed"


def test_check_config_online_names_the_customer_key_the_meter_expects(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1, auto_meters=False)
    meter = create_meter(
        world.emulator.base_url, "api_requests", customer_key="cust_key", value_key="value"
    )
    mapping = {"constant_event_name": "api_requests"}

    code, _stdout, stderr = check_online(checked(world, mapping=mapping))

    assert code == 2, stderr
    expected = (
        f"mapping.customer_payload_key: meter_payload_mismatch: meter {meter['id']} for event "
        "name 'api_requests' expects the customer under 'cust_key', the config sends it under "
        "'stripe_customer_id': set mapping.customer_payload_key to 'cust_key'"
    )
    assert expected in stderr

    # The same lines from preflight(), what `meterstream run` calls before consuming.
    with pytest.raises(ConfigError) as refused:
        asyncio.run(preflight(load_config(checked(world, mapping=mapping), environ=ENV)))
    assert str(refused.value) == f"invalid configuration: {expected}"

    fixed = checked(world, mapping={**mapping, "customer_payload_key": "cust_key"})
    code, stdout, stderr = check_online(fixed)
    assert code == 0, stderr
    [row] = [s for s in stdout.splitlines() if meter["id"] in s]
    assert row.split()[1:] == ["api_requests", meter["id"], "active", "sum", "cust_key", "value"]
    catalog = asyncio.run(preflight(load_config(fixed, environ=ENV)))
    assert catalog.get("api_requests") is not None


def test_check_config_online_says_reactivate_for_an_inactive_meter(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1, auto_meters=False)
    meter = create_meter(world.emulator.base_url, "api_requests")
    deactivate_meter(world.emulator.base_url, meter["id"])

    code, _stdout, stderr = check_online(
        checked(world, mapping={"constant_event_name": "api_requests"})
    )

    assert code == 2
    assert f"meter {meter['id']} for event name 'api_requests' is inactive" in stderr
    assert "reactivate the meter in the Dashboard" in stderr


def test_check_config_online_gives_up_on_an_unreachable_stripe_with_one_line(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = checked(world, stripe={"api_base": closed, "meter_events_base": closed})

    code, _stdout, stderr = check_online(config)

    assert code == 1
    [line] = stderr.strip().splitlines()
    assert line.startswith("meterstream: Stripe unreachable: cannot reach 127.0.0.1")
    assert "gave up after 3 attempts" in line


def test_an_outage_is_retried_and_then_reported_as_unreachable(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1, outage=True, fault_scope="all")
    code, _stdout, stderr = check_online(
        checked(
            world,
        )
    )
    assert code == 1
    assert "Stripe unreachable: HTTP 503 from Stripe listing billing meters" in stderr
    assert world.emulator.stats()["requests"]["by_endpoint"]["meters"] == 3

    # preflight() itself waits the outage out instead of giving up.
    config = load_config(
        checked(
            world,
        ),
        environ=ENV,
    )
    outcome: list[object] = []
    waiter = threading.Thread(target=lambda: outcome.append(asyncio.run(preflight(config))))
    waiter.start()
    wait_until(
        lambda: world.emulator.stats()["requests"]["by_endpoint"]["meters"] >= 5,
        timeout=60,
        what="preflight to retry through the outage",
    )
    assert not outcome, "no answer yet: still retrying"
    world.emulator.configure(outage=False)
    waiter.join(60)
    assert len(outcome) == 1, "preflight returned once Stripe answered"


def test_a_refused_api_key_is_a_configuration_error(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1)
    code, _stdout, stderr = check_online(
        checked(
            world,
        ),
        env={"STRIPE_API_KEY": "not_a_key"},
    )
    assert code == 2
    assert "stripe.api_key: HTTP 401 from Stripe listing billing meters" in stderr
    assert "check STRIPE_API_KEY" in stderr
    assert "not_a_key" not in stderr

    config = load_config(
        checked(
            world,
        ),
        environ={"STRIPE_API_KEY": "not_a_key"},
    )
    with pytest.raises(AuthenticationError):
        asyncio.run(list_meters(config.stripe, config.require_api_key()))


def test_preflight_false_lists_nothing_and_checks_nothing(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1, auto_meters=False)
    config = load_config(
        checked(world, mapping={"constant_event_name": "nowhere"}, meters={"preflight": False}),
        environ=ENV,
    )
    catalog = asyncio.run(preflight(config))
    assert catalog.check("nowhere", "a", "b") is None
    assert "meters" not in world.emulator.stats()["requests"]["by_endpoint"]


def test_unreachable_is_a_backoff_error_in_process(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1, outage=True, fault_scope="all")
    config = load_config(
        checked(
            world,
        ),
        environ=ENV,
    )
    with pytest.raises(BackoffError) as info:
        asyncio.run(list_meters(config.stripe, config.require_api_key()))
    assert info.value.status == 503
