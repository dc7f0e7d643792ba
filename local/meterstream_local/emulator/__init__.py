"""A local stand-in for Stripe's meter APIs, for development, tests, the demo and benchmarks.

It serves both Stripe hosts (``api`` and ``meter_events``) on one port and follows
``docs/stripe-contract.md``: meter event sessions with expiry, the stream with its
1..100-event limit and per-event checks, 24-hour identifier dedupe, ``Request-Id`` on
every response, v2 and v1 error bodies, meters and event summaries, adjustments,
customers, and validation after the 200 (dropped events reported as v2 thin events on
``/v2/core/events``; see ``docs/emulator.md``). Knobs inject latency, 500s, 429s, outages,
rate limits and session expiry.

    with EmulatorServer(latency_ms=5) as stripe:
        ...  # point the connector at stripe.base_url
        stripe.configure(outage=True)
        assert stripe.state.totals("api_requests")["cus_1"]["sum"] == 25

Modules: ``meters`` (meter declarations), ``validation`` (the contract checks),
``faults`` (knobs), ``state`` (what was accepted), ``reports`` (what was dropped, as thin
events), ``clock`` (v2 timestamps), ``app`` (the ASGI app), ``server``
(uvicorn in a thread), ``client`` (``/_emulator`` calls, the emulator as a subprocess),
``cli`` (``meterstream emulator``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meterstream_local.emulator.client import EmulatorClient, EmulatorProcess
    from meterstream_local.emulator.faults import FailureRule, KnobError, Knobs
    from meterstream_local.emulator.meters import (
        Meter,
        MeterSpecError,
        load_meters_file,
        parse_meter_spec,
    )
    from meterstream_local.emulator.server import (
        DEFAULT_HOST,
        DEFAULT_PORT,
        EmulatorError,
        EmulatorServer,
    )
    from meterstream_local.emulator.state import EmulatorState

#: Public name -> defining module. Imported on first use: ``meterstream --help`` imports
#: ``meterstream_local.emulator.cli`` (and so this package) and must not pay for httpx/uvicorn.
_EXPORTS = {
    "DEFAULT_HOST": "server",
    "DEFAULT_PORT": "server",
    "EmulatorClient": "client",
    "EmulatorError": "server",
    "EmulatorProcess": "client",
    "EmulatorServer": "server",
    "EmulatorState": "state",
    "FailureRule": "faults",
    "KnobError": "faults",
    "Knobs": "faults",
    "Meter": "meters",
    "MeterSpecError": "meters",
    "load_meters_file": "meters",
    "parse_meter_spec": "meters",
}
__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "EmulatorClient",
    "EmulatorError",
    "EmulatorProcess",
    "EmulatorServer",
    "EmulatorState",
    "FailureRule",
    "KnobError",
    "Knobs",
    "Meter",
    "MeterSpecError",
    "load_meters_file",
    "parse_meter_spec",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
