"""``python -m meterstream_local.localkafka fetch|run``.

``fetch`` (scripts/bootstrap.sh) fetches the broker's jars once and prints one line saying
where they are and whether they were fetched or cached; it exits 1 with the reason (no mvn,
Maven's own error) when they cannot be fetched. ``run`` is ``meterstream local-kafka``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from connector.errors import LocalKafkaError
from meterstream_local.localkafka import cli
from meterstream_local.localkafka.jars import KAFKA_VERSION, cached_jars, fetch_jars


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m meterstream_local.localkafka``."""
    parser = argparse.ArgumentParser(
        prog="python -m meterstream_local.localkafka",
        description="Manage the local Kafka broker's jars (the broker itself: "
        "`meterstream local-kafka`).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "fetch", help=f"fetch the Kafka {KAFKA_VERSION} jars with mvn once (cached)"
    )
    run = commands.add_parser(
        "run", help="run a broker in the foreground (the same as `meterstream local-kafka`)"
    )
    cli.add_arguments(run)
    args = parser.parse_args(argv)
    if args.command == "run":
        try:
            return cli.main(args)
        except KeyboardInterrupt:
            return 130
        except LocalKafkaError as exc:
            print(f"localkafka: {exc}", file=sys.stderr)
            return 1
    was_cached = cached_jars() is not None
    started = time.monotonic()
    try:
        libs = fetch_jars()
    except LocalKafkaError as exc:
        print(f"localkafka: {exc}", file=sys.stderr)
        return 1
    jars = len(list(libs.glob("*.jar")))
    how = "cached" if was_cached else f"fetched in {time.monotonic() - started:.1f} s"
    print(f"localkafka: Kafka {KAFKA_VERSION} jars ready in {libs} ({jars} jars, {how})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
