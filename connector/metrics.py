"""Prometheus metrics: every number an operator needs at 3 a.m., under ``meterstream_``.

The objects are module-level, like the ``logging`` loggers: the code that counts imports
this module and increments, nothing is passed around. With ``--workers N`` the supervisor
calls ``prepare_multiprocess`` before it spawns workers, so every process writes its
samples to files in a shared directory that the supervisor's ``/metrics`` aggregates
(prometheus-client's multiprocess mode). Gauges say how they aggregate across workers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, Info

from connector import __version__

#: prometheus-client reads this variable when it is first imported (in each process).
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Request latency buckets: from loopback (~1 ms) to Stripe's slow tail and timeouts.
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: Batch sizes: Stripe caps a request at 100 events; small batches mean linger is too low.
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 75, 99, 100)

RECORDS_CONSUMED = Counter("meterstream_records_consumed", "Records read from Kafka.", ["topic"])
EVENTS_SENT = Counter("meterstream_events_sent", "Meter events Stripe accepted.")
BATCHES = Counter(
    "meterstream_batches",
    "Requests to the meter event stream, by outcome (ok, retried, rejected).",
    ["outcome"],
)
DEAD_LETTERS = Counter(
    "meterstream_dead_letters", "Records written to the dead-letter topic, by reason.", ["reason"]
)
AGGREGATED_RECORDS = Counter(
    "meterstream_aggregated_records",
    "Records summed into aggregate events (aggregation.enabled), by event name.",
    ["event_name"],
)
AGGREGATE_EVENTS = Counter(
    "meterstream_aggregate_events",
    "Aggregate events made from those records, by event name (records / events: the reduction).",
    ["event_name"],
)
REQUEST_DURATION = Histogram(
    "meterstream_request_duration_seconds",
    "Latency of meter event stream requests, by outcome.",
    ["outcome"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "meterstream_batch_size_events", "Events per request sent to Stripe.", buckets=_BATCH_BUCKETS
)
REQUESTS_IN_FLIGHT = Gauge(
    "meterstream_requests_in_flight",
    "Requests to Stripe awaiting an answer.",
    multiprocess_mode="livesum",
)
#: Summed over a pod's workers: the pod's capacity to Stripe, next to requests_in_flight.
CONCURRENCY_LIMIT = Gauge(
    "meterstream_concurrency_limit",
    "Requests the process may have in flight: batching.max_in_flight, or the adaptive "
    "limit found from Stripe's answers (batching.adaptive_concurrency).",
    multiprocess_mode="livesum",
)
RETRIES = Counter(
    "meterstream_retries",
    "Requests retried, by cause (rate_limited, server_error, timeout, connection, "
    "unauthorized, session_expired).",
    ["cause"],
)
SESSION_RENEWALS = Counter(
    "meterstream_session_renewals", "Meter event sessions created (first one included)."
)
SESSION_EXPIRY = Gauge(
    "meterstream_session_expires_in_seconds",
    "Seconds until the current meter event session expires (the soonest across workers).",
    multiprocess_mode="livemin",
)
COMMITS = Counter("meterstream_commits", "Offset commits, by result (ok, failed).", ["result"])
REBALANCES = Counter(
    "meterstream_rebalances",
    "Partition assignment changes, by kind (assigned, revoked, lost).",
    ["kind"],
)
ASSIGNED_PARTITIONS = Gauge(
    "meterstream_assigned_partitions", "Partitions assigned.", multiprocess_mode="livesum"
)
CONSUMER_LAG = Gauge(
    "meterstream_consumer_lag_records",
    "Records between the high watermark and the next record to process, per partition.",
    ["topic", "partition"],
    multiprocess_mode="livemax",
)
CONSUMER_LAG_AGE = Gauge(
    "meterstream_consumer_lag_seconds",
    "Age of the oldest record not yet billed or dead-lettered, per partition (0 when caught up).",
    ["topic", "partition"],
    multiprocess_mode="livemax",
)
RETENTION_HEADROOM = Gauge(
    "meterstream_retention_headroom_seconds",
    "The topic's retention.ms minus the oldest unresolved record's age: time left before "
    "Kafka deletes records not yet billed (absent for topics without time retention).",
    ["topic"],
    multiprocess_mode="livemin",
)
PAUSED_PARTITIONS = Gauge(
    "meterstream_paused_partitions",
    "Partitions paused by backpressure (too much work waiting for Stripe, or a partition "
    "holding two aggregation blocks).",
    multiprocess_mode="livesum",
)
BUFFERED_RECORDS = Gauge(
    "meterstream_buffered_records",
    "Records held in memory: not yet resolved (billed or dead-lettered), or resolved behind "
    "one that is not; fetching pauses at batching.max_buffered_records.",
    multiprocess_mode="livesum",
)
STRIPE_ERROR_REPORTS = Counter(
    "meterstream_stripe_error_reports",
    "Meter events Stripe dropped after accepting them (its asynchronous error reports), by "
    "error code.",
    ["code"],
)
#: Info is not supported in multiprocess mode; the supervisor's own registry carries it.
BUILD_INFO = Info("meterstream_build", "The running meterstream version.")
BUILD_INFO.info({"version": __version__})

# -- meters (the account's billing meters, checked before events are sent) --------------

METERS = Gauge(
    "meterstream_meters",
    "Billing meters in the Stripe account at the last listing, by status (active, inactive).",
    ["status"],
    multiprocess_mode="livemax",
)
METER_PREFLIGHT_FAILURES = Counter(
    "meterstream_meter_preflight_failures",
    "Events refused before sending because no active meter takes them as mapped, by reason "
    "(no_active_meter, meter_payload_mismatch, windowed_meter).",
    ["reason"],
)


def forget_partition(topic: str, partition: int) -> None:
    """Drop a partition's lag series once it is handed over (zero it in multiprocess mode,
    where prometheus-client cannot remove label sets)."""
    for gauge in (CONSUMER_LAG, CONSUMER_LAG_AGE):
        if os.environ.get(MULTIPROCESS_ENV):
            gauge.labels(topic, str(partition)).set(0)
        else:
            with contextlib.suppress(KeyError):
                gauge.remove(topic, str(partition))


def forget_retention(topic: str) -> None:
    """Drop a topic's retention headroom (it has no time retention, or it is unknown)."""
    if not os.environ.get(MULTIPROCESS_ENV):
        with contextlib.suppress(KeyError):
            RETENTION_HEADROOM.remove(topic)


def prepare_multiprocess(directory: Path) -> None:
    """Make ``directory`` the (empty) sample directory of this process and its children.

    Must run before the worker processes start: each reads the variable when it imports
    prometheus-client.
    """
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    os.environ[MULTIPROCESS_ENV] = str(directory)


def mark_process_dead(pid: int) -> None:
    """Drop a finished worker's live gauges from the aggregate (multiprocess mode only)."""
    if os.environ.get(MULTIPROCESS_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
