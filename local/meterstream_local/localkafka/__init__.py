"""The local Kafka world: a real Apache Kafka broker for development, tests, demo and benchmarks.

    cluster()      the one entry point: KAFKA_BOOTSTRAP_SERVERS, else Docker, else the jars
    LocalKafka     a single-node KRaft broker run from Maven Central jars with the local JDK
    fetch_jars()   fetch them once into the cache (python -m meterstream_local.localkafka fetch)
    create_topics(), delete_topics(), end_offsets(), committed_offsets(): admin helpers

Everything here imports only the standard library at module level (confluent-kafka and
testcontainers load on use), so the CLI can import it to build ``--help``.
"""

from __future__ import annotations

from meterstream_local.localkafka.admin import (
    committed_offsets,
    create_topics,
    delete_topics,
    end_offsets,
    produce_all,
    wait_until_serving,
)
from meterstream_local.localkafka.broker import LocalKafka, find_java, free_ports
from meterstream_local.localkafka.cluster import cluster, docker_available
from meterstream_local.localkafka.jars import KAFKA_VERSION, cache_root, fetch_jars
from meterstream_local.localkafka.settings import BROKER_SETTINGS

__all__ = [
    "BROKER_SETTINGS",
    "KAFKA_VERSION",
    "LocalKafka",
    "cache_root",
    "cluster",
    "committed_offsets",
    "create_topics",
    "delete_topics",
    "docker_available",
    "end_offsets",
    "fetch_jars",
    "find_java",
    "free_ports",
    "produce_all",
    "wait_until_serving",
]
