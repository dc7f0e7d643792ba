"""``python -m meterstream_local.emulator``: the same as ``meterstream emulator``.

Starting the emulator this way builds only its own parser, so a child process starts
faster and does not depend on the other subcommands' modules.
"""

from __future__ import annotations

import argparse
import sys

from connector.errors import ConfigError
from meterstream_local.emulator.cli import add_arguments, main


def run() -> int:
    """Parse the emulator's flags and serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="meterstream emulator",
        description="Serve a local stand-in for Stripe's meter APIs (both hosts, one port).",
    )
    add_arguments(parser)
    args = parser.parse_args()
    try:
        return main(args)
    except ConfigError as exc:
        print(f"meterstream: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
