"""The local Kafka world works: a real broker that serves confluent-kafka, consumer groups
that commit, leave, rejoin and rebalance, restarts that keep data, and clear errors.

Everything talks to a real broker over 127.0.0.1 (the session one, or a broker of the
test's own where it must stop or restart); waits poll a condition with a deadline.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from connector.errors import LocalKafkaError
from meterstream_local.localkafka import (
    KAFKA_VERSION,
    LocalKafka,
    cluster,
    committed_offsets,
    create_topics,
    end_offsets,
    fetch_jars,
    free_ports,
    produce_all,
    wait_until_serving,
)
from meterstream_local.localkafka import broker as broker_module
from meterstream_local.localkafka.jars import jars_dir, pom_text

pytestmark = pytest.mark.integration

#: The module (the package re-exports its ``cluster`` function under the same name).
cluster_module = importlib.import_module("meterstream_local.localkafka.cluster")

REPO = Path(__file__).resolve().parents[2]
#: Group members notice a rebalance within half a second (the default heartbeat is 3 s).
FAST_GROUP: dict[str, Any] = {
    "heartbeat.interval.ms": 500,
    "session.timeout.ms": 6000,
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
}
#: Generous: the machine is shared; these waits normally end within a second or two.
WAIT_SECONDS = 30.0


# --------------------------------------------------------------------------- helpers


def make_consumer(bootstrap: str, group: str, **extra: Any) -> Any:
    """A consumer with manual commits that starts from the beginning of new partitions."""
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, **FAST_GROUP, **extra})


def consume(consumer: Any, count: int, *, timeout: float = WAIT_SECONDS) -> list[Any]:
    """Exactly the next ``count`` messages (fails on a broker error or the deadline)."""
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count:
        assert time.monotonic() < deadline, f"consumed {len(messages)} of {count} messages"
        message = consumer.poll(0.2)
        if message is None:
            continue
        assert message.error() is None, message.error()
        messages.append(message)
    return messages


def poll_until(
    consumers: Iterable[Any],
    condition: Callable[[], bool],
    what: str,
    *,
    timeout: float = WAIT_SECONDS,
) -> None:
    """Poll every consumer (serving rebalances) until ``condition`` holds; no message may arrive."""
    consumers = list(consumers)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        for consumer in consumers:
            message = consumer.poll(0.1)
            assert message is None, f"unexpected message while waiting for {what}"


def partitions_of(consumer: Any) -> set[int]:
    return {tp.partition for tp in consumer.assignment()}


def produce(
    bootstrap_or_producer: str | Any, topic: str, values: Iterable[tuple[int, bytes]]
) -> None:
    """Produce ``(partition, value)`` pairs and wait until every one is acknowledged."""
    if isinstance(bootstrap_or_producer, str):
        producer = Producer({"bootstrap.servers": bootstrap_or_producer, "acks": "all"})
    else:
        producer = bootstrap_or_producer
    failures: list[Any] = []
    for partition, value in values:
        producer.produce(
            topic,
            value=value,
            partition=partition,
            on_delivery=lambda err, _m: failures.append(err) if err else None,
        )
    assert producer.flush(WAIT_SECONDS) == 0, "messages still unacknowledged"
    assert failures == []


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except OSError:
        return True


def wait_for(condition: Callable[[], bool], what: str, *, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.05)


# --------------------------------------------------------------------------- the session broker


def test_produce_and_consume_round_trip(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    group_id_factory: Callable[..., str],
    producer: Any,
) -> None:
    topic = topic_factory()
    for i in range(20):
        producer.produce(
            topic, key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("n", str(i).encode())]
        )
    assert producer.flush(WAIT_SECONDS) == 0
    assert end_offsets(kafka_bootstrap, topic) == {0: 20}

    consumer = make_consumer(kafka_bootstrap, group_id_factory())
    consumer.subscribe([topic])
    try:
        messages = consume(consumer, 20)
    finally:
        consumer.close()
    assert [(m.offset(), m.key(), m.value(), m.headers()) for m in messages] == [
        (i, f"k{i}".encode(), f"v{i}".encode(), [("n", str(i).encode())]) for i in range(20)
    ]


def test_produce_all_writes_every_record_in_order(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    group_id_factory: Callable[..., str],
) -> None:
    topic = topic_factory()
    # More than the producer's default local queue holds at once: the BufferError path runs.
    records = [(None if i % 2 else f"k{i}".encode(), f"v{i}".encode()) for i in range(120_000)]
    assert produce_all(kafka_bootstrap, topic, records) == len(records)
    assert end_offsets(kafka_bootstrap, topic) == {0: len(records)}

    consumer = make_consumer(kafka_bootstrap, group_id_factory())
    consumer.subscribe([topic])
    try:
        first = consume(consumer, 3)
    finally:
        consumer.close()
    assert [(m.key(), m.value()) for m in first] == records[:3]


def test_group_commits_leaves_rejoins_and_resumes_from_the_committed_offset(
    kafka_bootstrap: str, topic_factory: Callable[..., str], group_id_factory: Callable[..., str]
) -> None:
    topic = topic_factory()
    group = group_id_factory()
    produce(kafka_bootstrap, topic, ((0, str(i).encode()) for i in range(10)))
    assert committed_offsets(kafka_bootstrap, group, topic) == {}

    first = make_consumer(kafka_bootstrap, group)
    first.subscribe([topic])
    got = consume(first, 4)
    first.commit(message=got[-1], asynchronous=False)
    first.close()  # leaves the group
    assert [m.value() for m in got] == [b"0", b"1", b"2", b"3"]
    assert committed_offsets(kafka_bootstrap, group, topic) == {0: 4}

    produce(kafka_bootstrap, topic, ((0, str(i).encode()) for i in range(10, 15)))
    second = make_consumer(kafka_bootstrap, group)
    second.subscribe([topic])
    rest = consume(second, 11)
    second.commit(asynchronous=False)
    second.close()
    assert [(m.offset(), m.value()) for m in rest] == [(i, str(i).encode()) for i in range(4, 15)]
    assert committed_offsets(kafka_bootstrap, group, topic) == {0: 15}
    assert end_offsets(kafka_bootstrap, topic) == {0: 15}


def test_two_consumers_split_four_partitions_and_the_survivor_takes_all(
    kafka_bootstrap: str, topic_factory: Callable[..., str], group_id_factory: Callable[..., str]
) -> None:
    topic = topic_factory(4)
    group = group_id_factory()
    revoked: dict[str, list[int]] = {"a": [], "b": []}
    members: dict[str, Any] = {}
    for name in ("a", "b"):
        member = make_consumer(
            kafka_bootstrap, group, **{"partition.assignment.strategy": "cooperative-sticky"}
        )
        member.subscribe(
            [topic],
            on_revoke=lambda _c, parts, name=name: revoked[name].extend(p.partition for p in parts),
        )
        members[name] = member
    a, b = members["a"], members["b"]
    open_members = [a, b]
    try:
        poll_until(
            (a, b),
            lambda: (
                bool(partitions_of(a))
                and bool(partitions_of(b))
                and partitions_of(a) | partitions_of(b) == {0, 1, 2, 3}
            ),
            "both members to hold partitions",
        )
        assert partitions_of(a).isdisjoint(partitions_of(b))

        # Each member reads only its own partitions; together they read everything once.
        produce(
            kafka_bootstrap, topic, ((p, f"{p}-{n}".encode()) for p in range(4) for n in range(2))
        )
        seen: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}
        deadline = time.monotonic() + WAIT_SECONDS
        while len(seen["a"]) + len(seen["b"]) < 8:
            assert time.monotonic() < deadline, f"consumed only {seen}"
            for name, member in members.items():
                message = member.poll(0.1)
                if message is not None:
                    assert message.error() is None, message.error()
                    seen[name].append((message.partition(), message.offset()))
        assert {p for p, _ in seen["a"]} == partitions_of(a)
        assert {p for p, _ in seen["b"]} == partitions_of(b)
        assert sorted(seen["a"] + seen["b"]) == [(p, o) for p in range(4) for o in range(2)]
        a.commit(asynchronous=False)
        b.commit(asynchronous=False)
        kept_by_a = partitions_of(a)

        revoked["a"].clear()
        open_members.remove(b)
        b.close()  # leaves: a rebalance hands b's partitions to a
        poll_until(
            (a,), lambda: partitions_of(a) == {0, 1, 2, 3}, "the survivor to hold all 4 partitions"
        )
        assert revoked["a"] == [], (
            "cooperative rebalancing must not take partitions from the survivor"
        )
        assert kept_by_a < partitions_of(a)

        # a resumes b's partitions where b committed: only the new messages arrive.
        produce(kafka_bootstrap, topic, ((p, f"{p}-new".encode()) for p in range(4)))
        fresh = consume(a, 4)
        assert sorted((m.partition(), m.offset(), m.value()) for m in fresh) == [
            (p, 2, f"{p}-new".encode()) for p in range(4)
        ]
    finally:
        for member in open_members:
            member.close()


# --------------------------------------------------------------------------- a broker of its own


def test_restart_and_a_crash_keep_messages_and_committed_offsets(local_kafka: LocalKafka) -> None:
    bootstrap = local_kafka.bootstrap_servers
    create_topics(bootstrap, {"usage": 1})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    produce(producer, "usage", [(0, b"before")])
    reader = make_consumer(bootstrap, "billing")
    reader.subscribe(["usage"])
    assert [m.value() for m in consume(reader, 1)] == [b"before"]
    reader.commit(asynchronous=False)
    reader.close()

    local_kafka.restart()
    assert local_kafka.bootstrap_servers == bootstrap
    assert committed_offsets(bootstrap, "billing", "usage") == {0: 1}
    produce(producer, "usage", [(0, b"after")])  # the same producer reconnects by itself

    local_kafka.kill()  # a crash: no clean shutdown
    assert not local_kafka.is_running
    assert refuses_connections(local_kafka.port)
    local_kafka.start()

    resumed = make_consumer(bootstrap, "billing")
    resumed.subscribe(["usage"])
    assert [(m.offset(), m.value()) for m in consume(resumed, 1)] == [(1, b"after")]
    resumed.close()
    assert end_offsets(bootstrap, "usage") == {0: 2}


def test_meterstream_local_kafka_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    data_dir = tmp_path / "kafka"
    cli = _start_cli("--port", str(port), "--data-dir", str(data_dir))
    try:
        assert f"ready at 127.0.0.1:{port}" in _read_until(cli, "ready at")
        wait_until_serving(f"127.0.0.1:{port}", timeout=10)
        cli.send_signal(signal.SIGTERM)
        output, _ = cli.communicate(timeout=WAIT_SECONDS)
    finally:
        _ensure_stopped(cli)
    assert cli.returncode == 0, output
    assert "local-kafka: stopped" in output
    assert refuses_connections(port)
    assert (data_dir / "kraft" / "meta.properties").is_file()  # a given data dir is kept
    assert "Kafka Server started" in (data_dir / "broker.log").read_text()


def test_the_broker_dies_with_its_parent_process() -> None:
    (port,) = free_ports(1)
    cli = _start_cli("--port", str(port))
    try:
        banner = _read_until(cli, "data:")
        cli.kill()  # SIGKILL: no atexit, no cleanup code runs in the parent
        cli.wait(WAIT_SECONDS)
    finally:
        _ensure_stopped(cli)
    wait_for(lambda: refuses_connections(port), "the orphaned broker to die")
    # Nobody was left to remove the temporary data directory; the banner names it.
    data = Path(banner.split("data:")[1].split()[0])
    assert data.name == "kraft"
    shutil.rmtree(data.parent)


def _start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        # The same add_arguments() and main() as `meterstream local-kafka`.
        [sys.executable, "-m", "meterstream_local.localkafka", "run", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(process: subprocess.Popen[str], marker: str) -> str:
    """The CLI's output up to the first line containing ``marker`` (its start-up budget)."""
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:  # the CLI prints "ready at" or fails and closes stdout
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError(f"the CLI exited before printing {marker!r}:\n{''.join(lines)}")


def _ensure_stopped(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate()


# --------------------------------------------------------------------------- clear failures


def test_missing_java_is_named_with_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(LocalKafkaError, match="'java' is not on PATH") as caught, LocalKafka():
        pass
    assert "openjdk-17" in str(caught.value)


@pytest.mark.parametrize("which", ["broker", "controller"])
def test_a_taken_port_is_named(which: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = {"port": taken} if which == "broker" else {"controller_port": taken}
        with (
            pytest.raises(LocalKafkaError, match=f"port {taken} on 127.0.0.1 .*already in use"),
            LocalKafka(**ports),
        ):
            pass


def test_a_broker_that_exits_early_is_reported_with_its_log() -> None:
    kafka = LocalKafka(heap="1m")  # the JVM refuses to start with so little heap
    try:
        with pytest.raises(LocalKafkaError, match="exited early") as caught:
            kafka.start()
        message = str(caught.value)
        assert str(kafka.log_path) in message
        assert "Too small maximum heap" in message  # the log's tail, the JVM's own words
        assert not kafka.is_running
    finally:
        kafka.close()
        shutil.rmtree(kafka.workdir)  # kept for the post-mortem by design; not needed here


def test_a_broker_that_does_not_serve_in_time_is_stopped_and_reported() -> None:
    kafka = LocalKafka(start_timeout=0.2)
    try:
        with pytest.raises(LocalKafkaError, match=r"did not serve 127\.0\.0\.1:\d+ within 0\.2 s"):
            kafka.start()
        assert not kafka.is_running
        assert kafka not in broker_module._live
    finally:
        kafka.close()
        shutil.rmtree(kafka.workdir)  # kept for the post-mortem by design; not needed here


def test_missing_mvn_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METERSTREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        LocalKafkaError, match=r"'mvn' \(Apache Maven\) is not on PATH.*apt-get install maven"
    ):
        fetch_jars()


def test_a_failing_mvn_shows_its_last_lines_and_leaves_no_partial_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mvn"
    fake.write_text(
        '#!/bin/sh\nfor i in $(seq 1 40); do echo "line $i"; done\n'
        "echo '[ERROR] Could not transfer artifact from central' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("METERSTREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    with pytest.raises(LocalKafkaError, match="mvn failed") as caught:
        fetch_jars()
    message = str(caught.value)
    assert "exit code 1" in message
    assert "Could not transfer artifact" in message
    assert "line 40" in message
    assert "line 1\n" not in message
    assert sorted(p.name for p in (tmp_path / "cache" / f"kafka-{KAFKA_VERSION}").iterdir()) == [
        ".fetch.lock"
    ]


def test_cached_jars_are_reused_without_maven(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    libs = fetch_jars()  # cached already by bootstrap or the session broker
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn (nor anything else) from here on
    assert fetch_jars() == libs == jars_dir()
    assert (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()
    assert (libs / "log4j-slf4j2-impl-2.24.3.jar").is_file()
    assert not list(libs.glob("slf4j-api-1.*.jar")), "slf4j 1.x would silence the broker's logs"


def test_the_pom_fetches_the_kafka_version_the_code_names() -> None:
    assert f"<kafka.version>{KAFKA_VERSION}</kafka.version>" in pom_text()


def test_cluster_uses_kafka_bootstrap_servers_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-a:9092,kafka-b:9092")
    running_before = set(broker_module._live)
    with cluster() as bootstrap:
        assert bootstrap == "kafka-a:9092,kafka-b:9092"
        assert set(broker_module._live) == running_before


def test_cluster_rejects_an_unknown_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("METERSTREAM_KAFKA", "podman")
    with pytest.raises(LocalKafkaError, match="expected auto, jars or docker"), cluster():
        pass


def test_a_docker_engine_without_testcontainers_falls_back_to_the_jars_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("METERSTREAM_KAFKA", raising=False)
    monkeypatch.setattr(cluster_module, "docker_available", lambda: True)
    monkeypatch.setitem(sys.modules, "testcontainers", None)  # find_spec: not installed
    assert cluster_module.choose_backend() == "jars"
    monkeypatch.delitem(sys.modules, "testcontainers")
    assert cluster_module.choose_backend() == "docker"


def test_forcing_docker_without_testcontainers_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("METERSTREAM_KAFKA", "docker")
    monkeypatch.setitem(sys.modules, "testcontainers", None)
    running_before = set(broker_module._live)
    with (
        pytest.raises(LocalKafkaError, match=r"pip install 'meterstream-local\[docker\]'"),
        cluster(),
    ):
        pass
    assert set(broker_module._live) == running_before


def test_topic_factory_topics_exist_with_their_partitions(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(3, name_prefix="custom")
    assert topic.startswith("custom-")
    assert end_offsets(kafka_bootstrap, topic) == {0: 0, 1: 0, 2: 0}
    with pytest.raises(LocalKafkaError, match="already exists"):
        create_topics(kafka_bootstrap, {topic: 3})
    create_topics(kafka_bootstrap, {topic: 3}, exist_ok=True)


@pytest.mark.skipif(
    bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
    reason="an external cluster (KAFKA_BOOTSTRAP_SERVERS) has its own auto-creation setting",
)
def test_topics_are_not_created_on_first_use_like_production(
    kafka_bootstrap: str, group_id_factory: Callable[..., str]
) -> None:
    missing = f"missing-{group_id_factory()}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.timeout.ms": 1000})
    errors: list[Any] = []
    producer.produce(missing, b"x", on_delivery=lambda err, _m: errors.append(err))
    producer.flush(WAIT_SECONDS)
    assert len(errors) == 1
    assert errors[0] is not None
    with pytest.raises(LocalKafkaError, match="not available"):
        end_offsets(kafka_bootstrap, missing)
