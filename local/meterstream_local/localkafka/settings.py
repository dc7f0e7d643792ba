"""How every local broker is configured, whichever way it is started (jars or Docker).

One table, so the jar-started broker and the testcontainers one behave the same: a single
node that is both KRaft controller and broker, tuned to start fast on a small machine and
to behave like production where the connector can tell (no topic auto-creation).
"""

from __future__ import annotations

import base64
import secrets

#: The broker's node id; one node, so any fixed id will do.
NODE_ID = 1

#: Broker settings for development, tests, demo and benchmarks, with why for each.
BROKER_SETTINGS: dict[str, str] = {
    # Production clusters do not create topics on first use: the connector must cope with a
    # missing dead-letter topic, so the local broker refuses too.
    "auto.create.topics.enable": "false",
    # A group's first member starts at once instead of waiting 3 s for others to join.
    "group.initial.rebalance.delay.ms": "0",
    # Lets tests use session.timeout.ms down to 1 s to see a killed consumer leave fast
    # (the broker's default floor is 6 s).
    "group.min.session.timeout.ms": "1000",
    # __consumer_offsets is created on the first group use: 4 partitions instead of 50
    # make that take milliseconds instead of seconds.
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.num.partitions": "4",
    # One node: every replication factor and in-sync minimum is 1.
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "num.partitions": "1",
    # The log cleaner (compacting __consumer_offsets) reserves 128 MiB by default; 16 MiB
    # is plenty here and fits the small heap the broker runs with.
    "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
    # After a crash (SIGKILL) the restarted node may register only once its previous
    # incarnation's session expired: 4 s instead of 9 s. Heartbeats every second keep a
    # healthy broker far from that limit even on a loaded machine.
    "broker.session.timeout.ms": "4000",
    "broker.heartbeat.interval.ms": "1000",
    # Fewer threads than a production broker: this runs next to the tests on 2 cores.
    "num.network.threads": "2",
    "num.io.threads": "4",
    "background.threads": "4",
    "num.recovery.threads.per.data.dir": "1",
}


def kraft_settings(
    *, listen_host: str, port: int, advertised: str, controller_port: int
) -> dict[str, str]:
    """The single-node KRaft identity: roles, listeners and the one-voter quorum."""
    return {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://{listen_host}:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{advertised}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    }


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 random bytes, URL-safe base64 without padding.

    The same shape as ``kafka-storage random-uuid`` prints, made here to save a JVM start;
    like Kafka we avoid ids starting with '-', which command lines would take for a flag.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def render_properties(settings: dict[str, str]) -> str:
    """``settings`` as a Java properties file (later keys win, like java.util.Properties)."""
    lines = ["# Written by meterstream (meterstream_local.localkafka); regenerated on every start."]
    for key, value in settings.items():
        # Backslashes are escapes in properties files; nothing else in our values needs it.
        escaped = value.replace("\\", "\\\\")
        lines.append(f"{key}={escaped}")
    return "\n".join(lines) + "\n"


def docker_environment(settings: dict[str, str]) -> dict[str, str]:
    """``settings`` as the apache/kafka image's environment (``log.dirs`` -> ``KAFKA_LOG_DIRS``).

    The image's rule: prefix ``KAFKA_``, upper-case, ``_`` -> ``___``, ``-`` -> ``__``,
    ``.`` -> ``_``.
    """
    env = {}
    for key, value in settings.items():
        name = key.replace("_", "___").replace("-", "__").replace(".", "_").upper()
        env[f"KAFKA_{name}"] = value
    return env
