"""``meterstream run`` and ``meterstream check-config``: from a config file to running workers.

With ``--workers 1`` (the default) the worker runs in this process. With ``--workers N``
this process becomes a supervisor: it starts N worker processes (same consumer group, so
Kafka splits the partitions between them), serves /metrics, /livez and /readyz for all of
them (prometheus multiprocess mode and per-worker status files), forwards SIGTERM/SIGINT,
and exits non-zero if any worker fails, so that Kubernetes restarts the pod.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector.config import MeterstreamConfig, load_config

if TYPE_CHECKING:
    from connector.health import HealthReport

#: linux/prctl.h: deliver a signal to this process when its parent dies.
_PR_SET_PDEATHSIG = 1
#: How often the supervisor checks on its workers.
_SUPERVISE_EVERY_SECONDS = 0.2


def add_config_argument(
    parser: argparse.ArgumentParser,
    help_text: str = "YAML config file (default: $METERSTREAM_CONFIG; without either, the "
    "built-in defaults plus METERSTREAM_* environment overrides)",
) -> None:
    """``--config FILE``, the same for every command that reads the configuration."""
    parser.add_argument("--config", metavar="FILE", default=None, help=help_text)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``meterstream run``."""
    add_config_argument(parser)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="consumer processes in this pod, all in the same group (default 1); more than "
        "one uses more cores, up to the topic's partition count",
    )
    parser.add_argument(
        "--until-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="burst mode: exit 0 once every assigned partition is caught up, everything is "
        "resolved and committed, and nothing new arrived for SECONDS (backfills, tests)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log lines for humans (text) or one JSON object per line (default: "
        "logging.format from the config, text)",
    )
    parser.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default=None,
        help="default: logging.level from the config, INFO",
    )


#: ``check-config --online`` gives up on an unreachable Stripe after this many attempts.
ONLINE_CHECK_ATTEMPTS = 3


def add_check_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``meterstream check-config``."""
    add_config_argument(parser)
    parser.add_argument(
        "--online",
        action="store_true",
        help="also list the Stripe account's billing meters (needs STRIPE_API_KEY), print "
        "them, and check that every event name the mapping sets has an active meter reading "
        "the payload keys it sends (exit 2 naming each problem, 1 if Stripe is unreachable)",
    )


def check_config_main(args: argparse.Namespace) -> int:
    """Validate and print the effective configuration, secrets redacted."""
    import yaml

    config = load_config(args.config)
    print(yaml.safe_dump(config.redacted_dict(), sort_keys=False), end="")
    if args.online:
        return _check_meters_online(config)
    if config.stripe.api_key is None:
        print(
            "note: stripe.api_key is not set; `meterstream run` needs STRIPE_API_KEY in its "
            "environment",
            file=sys.stderr,
        )
    return 0


def _check_meters_online(config: MeterstreamConfig) -> int:
    """The meter preflight of ``run``, against Stripe, with the meters it found printed."""
    import asyncio
    import logging

    from connector.meters import describe, ensure_mapping_fits, fetch_catalog

    # A few quick attempts, then one line: the per-retry warnings would only repeat it.
    logging.getLogger("meterstream.stripe").setLevel(logging.ERROR)

    if not config.meters.preflight:
        print(
            "note: meters.preflight is false: `meterstream run` skips these checks",
            file=sys.stderr,
        )
        enabled = config.meters.model_copy(update={"preflight": True})
        config = config.model_copy(update={"meters": enabled})
    catalog = asyncio.run(fetch_catalog(config, attempts=ONLINE_CHECK_ATTEMPTS))
    meters = catalog.meters
    print(f"# {len(meters)} billing meters in the Stripe account at {config.stripe.api_base}")
    for line in describe(meters):
        print(f"# {line}")
    if config.mapping.stripe_account:
        # The platform's meters bill nothing here: each connected account's are listed and
        # checked by ``run`` when its first record comes.
        print(
            "# meters: mapping.stripe_account routes every event to a connected account; "
            "each account's meters are checked when its first record arrives"
        )
        return 0
    ensure_mapping_fits(catalog, config.mapping)
    print("# meters: every event name the mapping sets has an active meter with its keys")
    return 0


def run_main(args: argparse.Namespace) -> int:
    """Run the connector until stopped (or idle, in burst mode)."""
    from connector.logs import configure as configure_logging

    overrides: dict[str, Any] = {}
    if args.log_format:
        overrides.setdefault("logging", {})["format"] = args.log_format
    if args.log_level:
        overrides.setdefault("logging", {})["level"] = args.log_level
    config = load_config(args.config, overrides=overrides)
    config.require_api_key()
    if args.workers < 1:
        from connector.errors import ConfigError

        raise ConfigError([("--workers", "must be at least 1")])
    if args.until_idle is not None and args.until_idle < 0:
        from connector.errors import ConfigError

        raise ConfigError([("--until-idle", "must be zero or more seconds")])
    configure_logging(
        config.logging.level, config.logging.format, repeat_seconds=config.logging.repeat_seconds
    )
    if args.workers == 1:
        return _run_single(config, args.until_idle)
    return _supervise(config, args.workers, args.until_idle)


def _run_single(config: MeterstreamConfig, until_idle: float | None) -> int:
    from connector.health import HealthServer, HealthState
    from connector.worker import run_worker

    health = HealthState(max_heartbeat_age=config.metrics.liveness_max_age_seconds)
    server = None
    if config.metrics.enabled:
        server = HealthServer(config.metrics, health.report)
        server.start()
    try:
        run_worker(config, health=health, until_idle=until_idle)
    finally:
        if server is not None:
            server.stop()
    return 0


def _follow_supervisor(supervisor: int) -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies (even by SIGKILL).

    Without it a killed supervisor leaves orphan workers that keep their partitions and
    bill outside any pod's control. SIGTERM, not SIGKILL: the orphan still hands over
    cleanly. Elsewhere than Linux this is a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_process(
    config: MeterstreamConfig,
    index: int,
    workers: int,
    until_idle: float | None,
    status: str,
    *,
    supervisor: int,
) -> None:
    """Entry point of a worker process (spawned: PROMETHEUS_MULTIPROC_DIR is inherited)."""
    _follow_supervisor(supervisor)
    from connector.health import HealthState
    from connector.logs import configure as configure_logging
    from connector.worker import run_worker

    configure_logging(
        config.logging.level,
        config.logging.format,
        worker=index,
        repeat_seconds=config.logging.repeat_seconds,
    )
    health = HealthState(
        max_heartbeat_age=config.metrics.liveness_max_age_seconds,
        status_file=Path(status) / f"worker-{index}.json",
    )
    run_worker(config, health=health, until_idle=until_idle, workers=workers, index=index)


def _supervise(config: MeterstreamConfig, workers: int, until_idle: float | None) -> int:
    import logging
    import multiprocessing

    from connector import metrics
    from connector.health import HealthServer, read_status_files

    log = logging.getLogger("meterstream.supervisor")
    scratch = Path(tempfile.mkdtemp(prefix="meterstream-"))
    metrics_dir = scratch / "metrics"
    status_dir = scratch / "status"
    status_dir.mkdir(parents=True)
    metrics.prepare_multiprocess(metrics_dir)

    def report() -> HealthReport:
        return read_status_files(status_dir, config.metrics.liveness_max_age_seconds)

    server = None
    if config.metrics.enabled:
        server = HealthServer(config.metrics, report, multiprocess=True)
        server.start()
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker_process,
            args=(config, index, workers, until_idle, str(status_dir)),
            kwargs={"supervisor": os.getpid()},
            name=f"meterstream-worker-{index}",
        )
        for index in range(workers)
    ]
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for process in processes:
        process.start()
    log.info("started %d workers", workers)
    code = 0
    try:
        while any(process.exitcode is None for process in processes):
            time.sleep(_SUPERVISE_EVERY_SECONDS)
            for process in processes:
                if process.exitcode not in (None, 0) and not stopping:
                    log.error(
                        "worker %s exited with %s: stopping the others",
                        process.name,
                        process.exitcode,
                    )
                    code = 1
                    stop(signal.SIGTERM, None)
        for process in processes:
            process.join()
            assert process.pid is not None
            metrics.mark_process_dead(process.pid)
            if process.exitcode != 0:
                code = 1
    finally:
        if server is not None:
            server.stop()
    return code
