"""``meterstream emulator``: serve a local Stripe until SIGINT/SIGTERM.

Top-level imports stay light: the CLI imports this module to build ``--help``.
"""

from __future__ import annotations

import argparse
from typing import Any

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_PORT = 12111  # == meterstream_local.emulator.server.DEFAULT_PORT (a test pins them equal)
_DEFAULT_TTL = 900.0  # Stripe's 15-minute session lifetime
#: How often the main thread wakes to notice a signal while the server thread serves.
_WAIT_SLICE_SECONDS = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The emulator's flags (every knob has one; see also POST /_emulator/configure)."""
    parser.epilog = (
        "Point both Stripe bases at the printed URL (stripe.api_base and "
        "stripe.meter_events_base). Inspect with GET /_emulator/stats; change knobs at run "
        "time with POST /_emulator/configure {json}; forget everything with POST "
        "/_emulator/reset."
    )
    where = parser.add_argument_group("where")
    where.add_argument(
        "--host", default=_DEFAULT_HOST, help="address to bind (default %(default)s)"
    )
    where.add_argument(
        "--port",
        type=int,
        default=_DEFAULT_PORT,
        help="port to bind (default %(default)s; 0 picks a free one)",
    )
    sessions = parser.add_argument_group("sessions")
    sessions.add_argument(
        "--session-ttl",
        type=float,
        default=_DEFAULT_TTL,
        metavar="SECONDS",
        help="lifetime of meter event sessions (default %(default)g, Stripe's 15 minutes)",
    )
    sessions.add_argument(
        "--session-max-requests",
        type=int,
        metavar="K",
        help="expire every session after K stream requests (sessions expiring every few requests)",
    )
    sessions.add_argument(
        "--session-expire-every",
        type=int,
        metavar="N",
        help="every Nth stream request, across all sessions, expires the session it uses "
        "(fresh sessions refused on first use)",
    )
    meters = parser.add_argument_group("meters")
    meters.add_argument(
        "--meter",
        action="append",
        default=[],
        metavar="EVENT[:FORMULA[:CUSTOMER_KEY[:VALUE_KEY[:WINDOW]]]]",
        help="declare a meter (repeatable); formula sum|count|last, keys default to "
        "stripe_customer_id and value; WINDOW hour|day sets event_time_window (only the most "
        "recent event per customer per window counts)",
    )
    meters.add_argument(
        "--meters-file",
        metavar="PATH",
        help="declare meters from a YAML/JSON file (a list, or {meters: [...]}, entries with "
        "event_name, formula, customer_key, value_key, display_name, status, "
        "event_time_window)",
    )
    meters.add_argument(
        "--no-auto-meters",
        dest="auto_meters",
        action="store_false",
        help="accept events whose event_name has no meter with 200 and drop them (reported as "
        "v1.billing.meter.no_meter_found, code no_meter), as Stripe does, instead of creating "
        "a sum meter on first use",
    )
    validation = parser.add_argument_group(
        "validation after the 200 (dropped events are reported on GET /v2/core/events)"
    )
    validation.add_argument(
        "--validation-delay",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="validation window: what accepted events dropped is reported this long after "
        "the window opened (default %(default)g; 0: at once)",
    )
    validation.add_argument(
        "--sync-validation",
        action="store_true",
        help="refuse events that fail meter or customer validation with a 400 at once "
        "(strict, not as Stripe does) instead of accepting and dropping them",
    )
    validation.add_argument(
        "--customers",
        metavar="CUS_A,CUS_B",
        help="the customers that exist: events for any other are dropped as "
        "meter_event_customer_not_found (default: every customer exists; POST /v1/customers "
        "adds one)",
    )
    validation.add_argument(
        "--drop-customers",
        metavar="CUS_A,CUS_B",
        help="accept these customers' events with 200, then drop them as "
        "meter_event_customer_not_found (for reconciliation tests)",
    )
    faults = parser.add_argument_group(
        "faults (meter event endpoints only, unless --fault-scope says otherwise)"
    )
    faults.add_argument("--latency-ms", type=float, default=0.0, help="fixed latency per request")
    faults.add_argument(
        "--jitter-ms", type=float, default=0.0, help="extra latency, uniform in 0..JITTER"
    )
    faults.add_argument(
        "--error-rate", type=float, default=0.0, metavar="FRACTION", help="answer this share 500"
    )
    faults.add_argument(
        "--rate-limit-rate",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="answer this share 429 with Retry-After",
    )
    faults.add_argument(
        "--retry-after",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="Retry-After sent with injected 429s (default %(default)g)",
    )
    faults.add_argument(
        "--requests-per-second",
        type=float,
        metavar="N",
        help="answer 429 + Retry-After beyond N requests per second",
    )
    faults.add_argument(
        "--events-per-second",
        type=float,
        metavar="N",
        help="answer 429 + Retry-After to stream requests beyond N events per second",
    )
    faults.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="N[-M][:STATUS]",
        help="a failure schedule: requests N..M to the endpoints in --fault-scope, counted from "
        "start, get STATUS (default 503; 429 comes with Retry-After); repeatable",
    )
    faults.add_argument(
        "--down", action="store_true", help="start in an outage: every request gets 503"
    )
    faults.add_argument(
        "--fault-scope",
        choices=("stream", "meter_events", "all"),
        default="meter_events",
        help="where faults apply: the stream, the session and stream endpoints (default), or "
        "every Stripe endpoint",
    )
    faults.add_argument("--seed", type=int, help="seed for random faults (reproducible runs)")


def knobs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Knobs`` values the flags ask for."""
    return {
        "session_ttl_seconds": args.session_ttl,
        "session_max_requests": args.session_max_requests,
        "session_expire_every": args.session_expire_every,
        "auto_meters": args.auto_meters,
        "validation_delay_seconds": args.validation_delay,
        "sync_validation": args.sync_validation,
        "customers": args.customers,
        "drop_customers": args.drop_customers,
        "latency_ms": args.latency_ms,
        "jitter_ms": args.jitter_ms,
        "error_rate": args.error_rate,
        "rate_limit_rate": args.rate_limit_rate,
        "retry_after_seconds": args.retry_after,
        "requests_per_second": args.requests_per_second,
        "events_per_second": args.events_per_second,
        "failures": ",".join(args.fail),
        "outage": args.down,
        "fault_scope": args.fault_scope,
        "seed": args.seed,
    }


def main(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; print the base URL first and a summary at the end."""
    import signal
    import sys
    import threading

    from connector.errors import ConfigError
    from meterstream_local.emulator.faults import KnobError
    from meterstream_local.emulator.meters import MeterSpecError, load_meters_file, parse_meter_spec
    from meterstream_local.emulator.server import EmulatorError, EmulatorServer

    try:
        meters = [parse_meter_spec(spec) for spec in args.meter]
        if args.meters_file:
            meters += load_meters_file(args.meters_file)
        server = EmulatorServer(args.host, args.port, meters=meters, **knobs_from_args(args))
    except (KnobError, MeterSpecError) as exc:
        raise ConfigError([("emulator", str(exc))]) from exc

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except EmulatorError as exc:
            print(f"meterstream: {exc}", file=sys.stderr)
            return 1
        url = server.base_url
        print(f"meterstream emulator listening on {url}", flush=True)
        print(f"  set stripe.api_base and stripe.meter_events_base to {url}", flush=True)
        print(f"  inspect: curl {url}/_emulator/stats", flush=True)
        while not stop.wait(_WAIT_SLICE_SECONDS):
            pass
        server.stop()
        stats = server.stats()
        events = stats["events"]
        print(
            f"meterstream emulator stopped: {stats['requests']['total']} requests, "
            f"{events['accepted']} events accepted, {events['duplicates']} duplicates, "
            f"{events['rejected']} rejected, {events['dropped']} dropped after validation, "
            f"{stats['sessions']['created']} sessions",
            flush=True,
        )
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
