"""Small admin helpers for tests, the demo and benchmarks, against any cluster.

Create and delete topics (waiting until metadata agrees), read end and committed offsets,
and wait until a broker really serves metadata. Each call opens a short-lived AdminClient:
these run a few times per test or demo, never on the connector's hot path. confluent-kafka
is imported inside the functions so ``meterstream --help`` does not pay for it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from connector.errors import LocalKafkaError

#: A loaded 2-core machine can take seconds to create a topic and elect its leaders.
ADMIN_TIMEOUT_SECONDS = 30.0
#: How often a wait re-checks the broker; short, because each check is one cheap request.
POLL_INTERVAL_SECONDS = 0.1
#: The group whose offsets are looked up to start the group coordinator; never joined.
_WARM_UP_GROUP = "meterstream-local-kafka-warm-up"
#: Upper bound of one metadata request while waiting, so a deadline is never overshot much.
_PROBE_REQUEST_SECONDS = 2.0


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    config: Mapping[str, str] | None = None,
    *,
    exist_ok: bool = False,
    timeout: float = ADMIN_TIMEOUT_SECONDS,
) -> None:
    """Create ``{name: partitions}`` and return once every partition has a leader.

    ``config`` (topic configs such as ``retention.ms``) applies to every topic. Existing
    topics are an error unless ``exist_ok``.
    """
    from confluent_kafka import KafkaError
    from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin re-exports it untyped

    if not topics:
        return
    admin = _admin(bootstrap)
    new = [
        NewTopic(name, num_partitions=partitions, replication_factor=-1, config=dict(config or {}))
        for name, partitions in topics.items()
    ]
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        try:
            future.result()
        except Exception as exc:
            error = _kafka_error(exc)
            if exist_ok and error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise LocalKafkaError(f"could not create topic {name!r} on {bootstrap}: {exc}") from exc
    deadline = time.monotonic() + timeout
    for name in topics:
        _wait(
            partial(_partitions_led, admin, name),
            deadline,
            f"topic {name!r} to have a leader for every partition on {bootstrap}",
        )


def delete_topics(
    bootstrap: str, names: Iterable[str], *, timeout: float = ADMIN_TIMEOUT_SECONDS
) -> None:
    """Delete topics (missing ones are fine) and return once metadata no longer lists them."""
    from confluent_kafka import KafkaError

    names = list(names)
    if not names:
        return
    admin = _admin(bootstrap)
    for name, future in admin.delete_topics(names, request_timeout=timeout).items():
        try:
            future.result()
        except Exception as exc:
            error = _kafka_error(exc)
            if error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise LocalKafkaError(f"could not delete topic {name!r} on {bootstrap}: {exc}") from exc
    deadline = time.monotonic() + timeout
    for name in names:
        _wait(
            partial(_absent, admin, name), deadline, f"topic {name!r} to disappear from {bootstrap}"
        )


def produce_all(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    *,
    timeout: float = 120.0,
    partition: int | None = None,
) -> int:
    """Produce ``(key, value)`` records as fast as the producer takes them, then flush.

    Returns how many were written; raises ``LocalKafkaError`` if any is still unsent after
    ``timeout`` or was refused. The producer is closed before returning (not when the
    broker has gone). ``partition`` sends every record there (else the key decides).
    """
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "acks": "all"})
    refused: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            refused.append(str(err))

    placed = -1 if partition is None else partition  # -1: the partitioner decides
    count = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value, partition=placed, on_delivery=report)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
        count += 1
    unsent = producer.flush(timeout)
    del producer
    if unsent:
        raise LocalKafkaError(
            f"{unsent} of {count} records to {topic!r} unsent after {timeout:g} s"
        )
    if refused:
        raise LocalKafkaError(f"{len(refused)} records to {topic!r} refused: {refused[:3]}")
    return count


def end_offsets(
    bootstrap: str, topic: str, *, timeout: float = ADMIN_TIMEOUT_SECONDS
) -> dict[int, int]:
    """Each partition's end offset (high watermark): ``{partition: offset}``."""
    import time

    from confluent_kafka import KafkaError, KafkaException, TopicPartition
    from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]  # untyped re-export

    admin = _admin(bootstrap)
    partitions = _partition_ids(admin, bootstrap, topic, timeout)
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # unannotated upstream
    request = {TopicPartition(topic, p): latest for p in partitions}
    # A topic created a moment ago may not have elected its leaders yet (a busy machine):
    # those answers are retried until the timeout, anything else fails at once.
    electing = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE}
    deadline = time.monotonic() + timeout
    while True:
        futures = admin.list_offsets(request, request_timeout=timeout)
        try:
            return {tp.partition: future.result().offset for tp, future in futures.items()}
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code not in electing or time.monotonic() >= deadline:
                raise LocalKafkaError(f"could not read end offsets of {topic!r}: {exc}") from exc
            time.sleep(0.1)
        except Exception as exc:
            raise LocalKafkaError(f"could not read end offsets of {topic!r}: {exc}") from exc


def committed_offsets(
    bootstrap: str, group: str, topic: str, *, timeout: float = ADMIN_TIMEOUT_SECONDS
) -> dict[int, int]:
    """The offsets ``group`` committed on ``topic``: ``{partition: offset}``.

    Partitions the group never committed are absent, so a new group gives ``{}``. Read
    through a (never subscribing) consumer, not AdminClient.list_consumer_group_offsets:
    librdkafka's admin path crashes the process when the group coordinator moves or is
    still loading (NOT_COORDINATOR; librdkafka issue #5040), exactly what happens right
    after a broker restart.
    """
    from confluent_kafka import TopicPartition

    partitions = _partition_ids(_admin(bootstrap), bootstrap, topic, timeout)
    consumer = _offsets_reader(bootstrap, group)
    try:
        result = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout)
    except Exception as exc:
        raise LocalKafkaError(
            f"could not read the offsets group {group!r} committed on {topic!r}: {exc}"
        ) from exc
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in result if tp.offset >= 0}


def wait_until_serving(
    bootstrap: str, *, timeout: float, check: Callable[[], None] | None = None
) -> None:
    """Return once the broker at ``bootstrap`` serves metadata and consumer groups.

    Serving metadata (a response listing a broker) is what clients need first; then one
    group-offsets lookup makes the broker create ``__consumer_offsets`` and load its group
    coordinator now (~0.2 s), instead of the first consumer group spending ~3 s in
    librdkafka's coordinator back-off. ``check`` runs before each attempt and may raise to
    stop waiting (the broker process died). Raises TimeoutError when ``timeout`` passes
    first. A plain TCP connect is tried before any Kafka client exists, so librdkafka never
    logs "connection refused" while the JVM is still starting.
    """
    host, port = _first_address(bootstrap)
    deadline = time.monotonic() + timeout
    admin: Any = None
    while True:
        if check is not None:
            check()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"no Kafka broker served metadata at {bootstrap} within {timeout:g} s"
            )
        if _accepts_connections(host, port):
            if admin is None:
                admin = _admin(bootstrap, quiet=True)
            try:
                probe = min(_PROBE_REQUEST_SECONDS, remaining)
                if admin.list_topics(timeout=probe).brokers and _groups_served(bootstrap, probe):
                    return
            except Exception:  # noqa: S110 - not serving yet is exactly what we wait out
                pass
        time.sleep(POLL_INTERVAL_SECONDS)


def _groups_served(bootstrap: str, timeout: float) -> bool:
    """Whether a group coordinator answers (asking about a group that never exists)."""
    from confluent_kafka import TopicPartition

    consumer = _offsets_reader(bootstrap, _WARM_UP_GROUP, quiet=True)
    try:
        consumer.committed([TopicPartition(_WARM_UP_GROUP, 0)], timeout)
    finally:
        consumer.close()
    return True


def _offsets_reader(bootstrap: str, group: str, *, quiet: bool = False) -> Any:
    """A consumer of ``group`` used only to read committed offsets (it never joins)."""
    from confluent_kafka import Consumer

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "allow.auto.create.topics": False,
    }
    if quiet:
        config["log_level"] = 0
    return Consumer(config)


def _admin(bootstrap: str, *, quiet: bool = False) -> Any:
    from confluent_kafka.admin import AdminClient

    # Asking about a missing topic must never create it, even where the broker would.
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "allow.auto.create.topics": False}
    if quiet:
        config["log_level"] = 0  # a starting broker is not worth a log line
    return AdminClient(config)


def _partition_ids(admin: Any, bootstrap: str, topic: str, timeout: float) -> list[int]:
    try:
        metadata = admin.list_topics(topic, timeout=timeout).topics.get(topic)
    except Exception as exc:
        raise LocalKafkaError(
            f"could not read metadata of {topic!r} on {bootstrap}: {exc}"
        ) from exc
    if metadata is None or metadata.error is not None:
        reason = "unknown" if metadata is None else metadata.error
        raise LocalKafkaError(f"topic {topic!r} is not available on {bootstrap}: {reason}")
    return sorted(metadata.partitions)


def _partitions_led(admin: Any, topic: str) -> int:
    """How many partitions ``topic`` has, or 0 while it or any partition is not ready."""
    metadata = admin.list_topics(topic, timeout=_PROBE_REQUEST_SECONDS).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        return 0
    if any(p.leader < 0 or p.error is not None for p in metadata.partitions.values()):
        return 0
    return len(metadata.partitions)


def _absent(admin: Any, topic: str) -> bool:
    return topic not in admin.list_topics(timeout=_PROBE_REQUEST_SECONDS).topics


def _wait(predicate: Callable[[], object], deadline: float, what: str) -> None:
    while True:
        try:
            if predicate():
                return
        except Exception:  # noqa: S110 - a metadata hiccup while waiting is retried
            pass
        if time.monotonic() > deadline:
            raise LocalKafkaError(f"timed out waiting for {what}")
        time.sleep(POLL_INTERVAL_SECONDS)


def _kafka_error(exc: BaseException) -> Any:
    """The KafkaError inside a KafkaException, if that is what ``exc`` is."""
    from confluent_kafka import KafkaException

    if isinstance(exc, KafkaException) and exc.args:
        return exc.args[0]
    return None


def _first_address(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",", maxsplit=1)[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    host, _, port = first.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
