"""``cluster()``: the one way tests, the demo and the benchmark get a Kafka cluster.

In order of preference:

1. ``KAFKA_BOOTSTRAP_SERVERS`` is set: use that cluster, start nothing.
2. A Docker engine answers and testcontainers is installed (an optional dependency:
   ``pip install 'meterstream-local[docker]'``): an ``apache/kafka`` container.
3. Otherwise: ``LocalKafka``, the broker run from the Maven Central jars with the local JDK.

``METERSTREAM_KAFKA=jars`` (or ``docker``) skips the detection and forces one backend;
forcing ``docker`` without testcontainers is an error that says what to install.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, cast

from connector.errors import LocalKafkaError
from meterstream_local.localkafka.admin import wait_until_serving
from meterstream_local.localkafka.broker import HOST, START_TIMEOUT_SECONDS, LocalKafka, free_ports
from meterstream_local.localkafka.jars import KAFKA_VERSION
from meterstream_local.localkafka.settings import (
    BROKER_SETTINGS,
    docker_environment,
    kraft_settings,
    new_cluster_id,
)

#: The official image of the same Kafka release the jar path runs.
KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
#: ``docker info`` answers in well under a second when an engine runs; a hung socket
#: must not stall every test session.
DOCKER_INFO_TIMEOUT_SECONDS = 5.0
#: The environment variable that forces a backend: auto (default), jars or docker.
BACKEND_ENV = "METERSTREAM_KAFKA"
#: What to install for the Docker backend (testcontainers is not a required dependency).
DOCKER_INSTALL_HINT = "pip install 'meterstream-local[docker]'"
#: Ports inside the container (the client one is published on a free loopback port).
_CONTAINER_PORT = 9092
_CONTAINER_CONTROLLER_PORT = 9093


@contextmanager
def cluster() -> Iterator[str]:
    """Yield the bootstrap servers of a running cluster; stop what was started on exit."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external
        return
    if choose_backend() == "docker":
        with _docker_kafka() as bootstrap:
            yield bootstrap
    else:
        with LocalKafka() as kafka:
            yield kafka.bootstrap_servers


def choose_backend() -> Literal["docker", "jars"]:
    """The backend ``cluster()`` starts: ``METERSTREAM_KAFKA``, else what this machine has.

    Docker only when testcontainers is installed too (it is optional); a Docker engine
    without it falls back to the jars broker rather than failing.
    """
    backend = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if backend not in ("auto", "jars", "docker"):
        raise LocalKafkaError(f"{BACKEND_ENV}={backend!r}: expected auto, jars or docker")
    if backend == "docker" and not testcontainers_installed():
        raise LocalKafkaError(
            f"{BACKEND_ENV}=docker needs testcontainers: {DOCKER_INSTALL_HINT} "
            f"(or unset {BACKEND_ENV} to run the jars broker)"
        )
    if backend == "docker" or (
        backend == "auto" and testcontainers_installed() and docker_available()
    ):
        return "docker"
    return "jars"


def testcontainers_installed() -> bool:
    """Whether the optional Docker backend can be used (without importing it: it is slow)."""
    return importlib.util.find_spec("testcontainers") is not None


def docker_available() -> bool:
    """Whether a Docker engine answers (not just whether the client is installed)."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "info"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=DOCKER_INFO_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@contextmanager
def _docker_kafka() -> Iterator[str]:
    """The same single-node broker in an apache/kafka container (testcontainers)."""
    from testcontainers.core.container import DockerContainer

    (port,) = free_ports(1)
    bootstrap = f"{HOST}:{port}"
    settings = {
        **kraft_settings(
            listen_host="0.0.0.0",
            port=_CONTAINER_PORT,
            advertised=bootstrap,
            controller_port=_CONTAINER_CONTROLLER_PORT,
        ),
        **BROKER_SETTINGS,
    }
    container = DockerContainer(KAFKA_IMAGE).with_envs(
        CLUSTER_ID=new_cluster_id(), **docker_environment(settings)
    )
    # Published on loopback only; docker-py takes (host ip, port) where the type says int.
    cast(dict[str, object], container.ports)[f"{_CONTAINER_PORT}/tcp"] = (HOST, port)
    with container:
        wait_until_serving(bootstrap, timeout=START_TIMEOUT_SECONDS)
        yield bootstrap
