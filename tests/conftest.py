"""Fixtures shared by the whole suite, one section per piece of the local world.

Kafka: one real broker for the session (``kafka_bootstrap``, from ``cluster()``: the
cluster in KAFKA_BOOTSTRAP_SERVERS, else Docker, else the Maven Central jars), factories for
uniquely named topics and consumer groups, a producer, and ``local_kafka`` for the tests
that stop, kill or restart a broker of their own. The broker starts on first use, so a run
of unit tests alone never starts one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from confluent_kafka import Producer

from meterstream_local.localkafka import LocalKafka, cluster, create_topics, delete_topics

# --------------------------------------------------------------------------- Kafka

#: Topic and group names carry the test's name (readable broker logs), cut to this length.
_NAME_PREFIX_CHARS = 40


def unique_name(prefix: str) -> str:
    """``prefix`` plus a random suffix: names never collide across tests or parallel runs."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _test_slug(request: pytest.FixtureRequest) -> str:
    """The current test's name, reduced to characters Kafka allows in topic names."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-.")
    return slug[:_NAME_PREFIX_CHARS] or "test"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of the session's Kafka cluster (started once, stopped at the end)."""
    with cluster() as bootstrap:
        yield bootstrap


@pytest.fixture
def topic_factory(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """``make(partitions=1, *, name_prefix=None, config=None) -> name``: a new, ready topic.

    Topics are deleted when the test ends.
    """
    created: list[str] = []

    def make(
        partitions: int = 1,
        *,
        name_prefix: str | None = None,
        config: Mapping[str, str] | None = None,
    ) -> str:
        name = unique_name(name_prefix or _test_slug(request))
        create_topics(kafka_bootstrap, {name: partitions}, config)
        created.append(name)
        return name

    yield make
    delete_topics(kafka_bootstrap, created)


@pytest.fixture
def group_id_factory(request: pytest.FixtureRequest) -> Callable[..., str]:
    """``make(*, name_prefix=None) -> group id``: a consumer group no other test uses."""

    def make(*, name_prefix: str | None = None) -> str:
        return unique_name(name_prefix or f"group-{_test_slug(request)}")

    return make


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[Any]:
    """A confluent-kafka Producer on the session cluster (acks=all), flushed at the end."""
    instance = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "linger.ms": 5})
    yield instance
    instance.flush(10)


@pytest.fixture
def local_kafka() -> Iterator[LocalKafka]:
    """A broker of this test's own (jars backend), for tests that stop, kill or restart it.

    Costs a broker start (a few seconds); use ``kafka_bootstrap`` whenever the broker can
    stay up.
    """
    with LocalKafka() as kafka:
        yield kafka


# --------------------------------------------------------------------------- Schema Registry


@pytest.fixture(scope="session")
def schema_registry_url() -> Iterator[str]:
    """The Confluent-compatible URL of the session's Schema Registry: SCHEMA_REGISTRY_URL,
    else an Apicurio Registry started from the cached bundle (once, on first use)."""
    from meterstream_local.registry import registry

    with registry() as url:
        yield url
