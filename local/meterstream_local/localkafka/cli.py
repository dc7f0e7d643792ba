"""``meterstream local-kafka``: run a single-node Kafka broker in the foreground.

Prints the bootstrap address once the broker serves, runs until Ctrl-C or SIGTERM, then
shuts the broker down cleanly. Top-level imports stay light: the CLI imports this module
to build ``--help``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

#: The port Kafka clients try by default; also the connector's default bootstrap server.
DEFAULT_PORT = 9092


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The local-kafka flags."""
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="client port on 127.0.0.1 (default %(default)s; 0 picks a free one)",
    )
    parser.add_argument(
        "--controller-port",
        type=int,
        default=0,
        help="KRaft controller port on 127.0.0.1 (default: a free one)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="keep the broker's data and broker.log here, reused by the next run (default: a "
        "temporary directory removed on exit)",
    )
    parser.add_argument(
        "--heap", default="512m", help="maximum Java heap of the broker (default %(default)s)"
    )
    parser.epilog = (
        "The first run fetches the Apache Kafka jars from Maven Central with mvn (cached in "
        "$METERSTREAM_CACHE or ~/.cache/meterstream) and needs java 17+. Point clients at "
        "the printed address, e.g. KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092."
    )


def main(args: Any) -> int:
    """Run the broker until interrupted; 0 after a clean stop, 1 if the broker died."""
    from meterstream_local.localkafka.broker import LocalKafka
    from meterstream_local.localkafka.jars import KAFKA_VERSION

    # SIGINT too: a shell that starts us in the background hands us SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    kafka = LocalKafka(
        args.port or None,
        controller_port=args.controller_port or None,
        data_dir=args.data_dir,
        heap=args.heap,
    )
    print(
        f"local-kafka: starting Kafka {KAFKA_VERSION} on {kafka.bootstrap_servers} ...", flush=True
    )
    with kafka:
        kept = "kept" if args.data_dir is not None else "temporary, removed on exit"
        print(
            f"local-kafka: ready at {kafka.bootstrap_servers}\n"
            f"  log:  {kafka.log_path}\n"
            f"  data: {kafka.data_path} ({kept})\n"
            "Stop with Ctrl-C.",
            flush=True,
        )
        try:
            code = kafka.wait()
        except KeyboardInterrupt:
            print("local-kafka: stopping the broker ...", flush=True)
            kafka.stop()
            print("local-kafka: stopped", flush=True)
            return 0
        print(
            f"local-kafka: the broker exited unexpectedly (exit code {code}); its log "
            f"{kafka.log_path} ends:\n{kafka.log_tail()}",
            file=sys.stderr,
        )
        return 1


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGINT stop the broker in order (the broker runs in its own session)."""
    raise KeyboardInterrupt
