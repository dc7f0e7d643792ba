"""The ``meterstream`` command: one subcommand per job, each with its own ``--help``.

Subcommands live in the module that owns them (``add_arguments(parser)`` and
``main(args) -> int``) and are imported only when chosen, so ``--help`` stays fast.
``demo``, ``emulator`` and ``local-kafka`` live in the separate ``meterstream-local``
distribution (``pip install 'meterstream[local]'``); without it they exit 2 saying so.
Errors end as one clear line on stderr (exit 2 for bad configuration, 1 otherwise);
``--debug`` or ``METERSTREAM_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from connector import __version__
from connector.errors import ConfigError, MeterstreamError

#: The package of the ``meterstream-local`` distribution (emulator, local broker, demo).
LOCAL_PACKAGE = "meterstream_local"
#: What to install when it is missing, for users and for a checkout of the repository.
LOCAL_INSTALL_HINT = "pip install 'meterstream[local]' (or for a checkout: pip install ./local)"

#: (name, module, one-line help, description). Modules provide add_arguments() and main().
SUBCOMMANDS: tuple[tuple[str, str, str, str], ...] = (
    (
        "run",
        "connector.runner",
        "stream usage records from Kafka into Stripe meter events",
        "Consume usage records, send them to Stripe's meter event stream in batches of up "
        "to 100, dead-letter what cannot be billed, and commit offsets only after success. "
        "Runs until SIGTERM/SIGINT, then hands over cleanly and exits 0.",
    ),
    (
        "check-config",
        "connector.runner",
        "validate a config file and print the effective config (secrets redacted)",
        "Load the config file and the environment overrides, validate every key and print "
        "the effective configuration as YAML with secrets redacted. Exit 2 naming each bad "
        "key.",
    ),
    (
        "reconcile",
        "connector.reconcile",
        "compare what Kafka committed with what Stripe's meters hold, per meter and customer",
        "Read the records the consumer group committed (from --start minus --lookback-hours "
        "to the committed offsets), map them with the current config, leave out the dead "
        "letters, sum the events whose timestamp is in [--start, --end) per event name and "
        "customer, and compare with Stripe's event summaries over the same window. Exit 0 "
        "when everything matches, 1 when anything differs, 2 for a bad invocation.",
    ),
    (
        "replay",
        "connector.replay",
        "bill dead letters again once their cause is fixed (a meter created, the mapping fixed)",
        "Read the dead-letter topic as group <kafka.group_id>.replay, from its committed "
        "offsets up to the end offsets at start. Map each selected letter's record again "
        "with the current config and the identifiers the connector would have used (from "
        "the letter's meterstream.source.* headers), send it to Stripe as `run` does, and "
        "write what still fails back to the dead-letter topic with its new reason and "
        "meterstream.attempts + 1. Letters not selected by --reason/--since are skipped and "
        "committed past; --until stops each partition at its first later letter, which is "
        "left for a later run. Only what resolved is committed. Run one replay at a time "
        "(it reads every partition itself). Prints per reason: read, skipped, billed, "
        "dead-lettered again. Exit 0 when it finished (even with letters dead-lettered "
        "again), 1 when it could not (nothing moved for --timeout seconds, or interrupted: "
        "what resolved is committed), 2 for a bad invocation.",
    ),
    (
        "emulator",
        "meterstream_local.emulator.cli",
        "serve a local stand-in for Stripe's meter APIs (development, tests, demo)",
        "Serve both Stripe hosts (api and meter_events) on one port, following Stripe's "
        "meter event session and stream contract, with knobs for latency and faults.",
    ),
    (
        "local-kafka",
        "meterstream_local.localkafka.cli",
        "run a single-node Apache Kafka broker on loopback (development)",
        "Fetch the Apache Kafka jars from Maven Central once (cached), then run a "
        "single-node KRaft broker on loopback until interrupted.",
    ),
    (
        "demo",
        "meterstream_local.demo",
        "the whole pipeline on the local defaults: broker, emulator, sample usage, connector",
        "Start a local broker and the emulator, produce realistic sample usage (with a few "
        "bad records), run the connector until idle, and print what was billed.",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser; subcommand modules are imported to add their own arguments."""
    parser = argparse.ArgumentParser(
        prog="meterstream",
        description="Stream usage records from Kafka into Stripe Billing meters: every "
        "record billed once, none lost, bad records kept in a dead-letter topic.",
    )
    parser.add_argument("--version", action="version", version=f"meterstream {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=os.environ.get("METERSTREAM_DEBUG") == "1",
        help="show full tracebacks on errors (also METERSTREAM_DEBUG=1)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, summary, description in SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only the distribution itself missing; a broken import inside it surfaces.
            if exc.name != LOCAL_PACKAGE:
                raise
            _add_missing_local_command(subparsers, name, summary)
            continue
        sub = subparsers.add_parser(name, help=summary, description=description)
        adder = getattr(module, f"add_{name.replace('-', '_')}_arguments", None)
        if adder is None:
            adder = module.add_arguments
        adder(sub)
        runner = getattr(module, f"{name.replace('-', '_')}_main", None)
        sub.set_defaults(handler=runner if runner is not None else module.main)
    return parser


def _add_missing_local_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
) -> None:
    """A stand-in for a local-tooling command: any arguments, even --help, get the hint."""
    sub = subparsers.add_parser(name, help=summary, add_help=False)

    def missing(args: argparse.Namespace) -> int:
        print(f"meterstream {name} needs the local tooling: {LOCAL_INSTALL_HINT}", file=sys.stderr)
        return 2

    sub.set_defaults(handler=missing, accepts_any_arguments=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meterstream`` console script."""
    parser = build_parser()
    # parse_args(), except that a stand-in for a missing command takes any arguments (its
    # real flags are unknown here) and answers with what to install.
    args, unrecognized = parser.parse_known_args(argv)
    if unrecognized and not getattr(args, "accepts_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unrecognized)}")
    try:
        code: int = args.handler(args)
        return code
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"meterstream: {exc}", file=sys.stderr)
        return 2
    except MeterstreamError as exc:
        if args.debug:
            raise
        print(f"meterstream: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"meterstream: unexpected {type(exc).__name__}: {exc} (run with --debug for the "
            "traceback)",
            file=sys.stderr,
        )
        return 1
