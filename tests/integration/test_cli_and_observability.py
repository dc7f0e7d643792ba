"""The command line and what an operator sees: exit codes, one-line errors, metrics, probes, logs.

Everything runs the real ``python -m connector`` process; metrics and probes are scraped
over loopback HTTP from a connector working against the real broker and the emulator.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.harness import (
    ConnectorProcess,
    free_port,
    run_meterstream,
    scrape,
    wait_until,
    write_config,
)
from tests.integration.test_connector import World, world_factory  # noqa: F401 - fixture
from tests.reliability.world import alter_topic_config

pytestmark = pytest.mark.integration


def test_help_lists_every_subcommand_and_each_has_help() -> None:
    result = run_meterstream("--help")
    assert result.returncode == 0
    for name in ("run", "check-config", "emulator", "local-kafka", "demo"):
        assert name in result.stdout
        sub = run_meterstream(name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "usage: meterstream" in sub.stdout


def test_check_config_names_each_bad_key_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {"batching": {"max_events": 500, "linger_ms": -1}, "kafka": {"topics": []}, "nope": 1}
        )
    )
    result = run_meterstream("check-config", "--config", str(path))
    assert result.returncode == 2
    for key in ("batching.max_events", "batching.linger_ms", "kafka.topics", "nope"):
        assert key in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        pytest.param(
            {"mapping": {"fan_out": [{"event_name": "t", "value": "a"}] * 2}},
            "mapping.fan_out.1.event_name",
            id="duplicate fan-out names",
        ),
        pytest.param(
            {"mapping": {"customer_payload_key": "k", "value_payload_key": "k"}},
            "mapping.value_payload_key",
            id="equal payload keys",
        ),
        pytest.param(
            {"aggregation": {"enabled": True}, "meters": {"preflight": False}},
            "aggregation.enabled",
            id="aggregation without the meters list",
        ),
        pytest.param(
            {"kafka": {"consumer": {"enable.auto.commit": True}}},
            "kafka.consumer.enable.auto.commit",
            id="reserved librdkafka key",
        ),
        pytest.param(
            {"kafka": {"consumer": {"fetch.wait.max.ms": "soon"}}},
            "kafka.consumer",
            id="bad librdkafka value",
        ),
        pytest.param(
            {"kafka": {"producer": {"no.such.property": 1}}},
            "kafka.producer",
            id="unknown librdkafka property",
        ),
    ],
)
def test_check_config_refuses_exactly_what_run_refuses(
    tmp_path: Path, settings: dict[str, Any], key: str
) -> None:
    """One validation path: both commands exit 2 with the same line naming the key."""
    path = tmp_path / "refused.yaml"
    path.write_text(yaml.safe_dump(settings))
    checked = run_meterstream("check-config", "--config", str(path))
    ran = run_meterstream(
        "run", "--config", str(path), env={"STRIPE_API_KEY": "sk_test_validation"}
    )
    for result in (checked, ran):
        assert result.returncode == 2, result.stderr
        assert key in result.stderr
        assert "Traceback" not in result.stderr
    assert checked.stderr.strip() == ran.stderr.strip()


def test_check_config_prints_the_effective_config_with_secrets_redacted(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"topics": ["usage", "usage-eu"]}}))
    result = run_meterstream(
        "check-config",
        "--config",
        str(path),
        env={
            "STRIPE_API_KEY": "sk_live_verysecret123",
            "METERSTREAM_BATCHING__LINGER_MS": "75",
        },
    )
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["kafka"]["topics"] == ["usage", "usage-eu"]
    assert effective["batching"]["linger_ms"] == 75, "environment overrides the file"
    assert "sk_live_verysecret123" not in result.stdout


def test_run_without_an_api_key_is_one_clear_line(tmp_path: Path) -> None:
    result = run_meterstream("run")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "STRIPE_API_KEY" in lines[0]


def test_a_missing_config_file_is_one_clear_line(tmp_path: Path) -> None:
    result = run_meterstream("run", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "absent.yaml" in result.stderr


def test_a_running_connector_reports_metrics_probes_and_json_logs(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=2)
    expected = world.produce_samples(1200, bad_every=100)
    port = free_port()
    config = world.config(
        metrics={"enabled": True, "host": "127.0.0.1", "port": port},
        # Every line, repeats included, so each dead-lettered record's line can be checked
        # (by default a repeated problem is one line per 30 s: test_a_down_broker_...).
        logging={"repeat_seconds": 0},
    )
    process = ConnectorProcess(config, log_dir=world.tmp_path, api_key="sk_test_observed_key_123")
    process.args += ["--log-format", "json"]
    world.processes.append(process)
    process.start()

    def settled() -> dict[str, float] | None:
        try:
            series = scrape(port)
        except httpx.HTTPError:
            return None
        sent = series.get("meterstream_events_sent_total", 0)
        dead = sum(v for k, v in series.items() if k.startswith("meterstream_dead_letters_total"))
        return series if sent == expected.events and dead == 12 else None

    series = wait_until(settled, timeout=60, what="metrics to count every record")
    consumed = sum(
        v for k, v in series.items() if k.startswith("meterstream_records_consumed_total")
    )
    assert consumed == expected.records
    for reason, count in expected.bad.items():
        assert series[f'meterstream_dead_letters_total{{reason="{reason}"}}'] == count
    assert series['meterstream_batches_total{outcome="ok"}'] >= expected.events / 100
    assert series["meterstream_assigned_partitions"] == 2
    assert series["meterstream_session_renewals_total"] >= 1
    assert 0 < series["meterstream_session_expires_in_seconds"] <= 900
    assert series['meterstream_request_duration_seconds_count{outcome="ok"}'] >= 1
    # Lag is sampled at each commit: once everything is resolved it reads 0 everywhere.
    lag_keys = [
        f'meterstream_consumer_lag_records{{partition="{p}",topic="{world.topic}"}}' for p in (0, 1)
    ]
    wait_until(
        lambda: all(scrape(port).get(key) == 0 for key in lag_keys),
        timeout=30,
        what=f"{lag_keys} to read 0",
    )
    assert wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200,
        timeout=30,
        what="/readyz to say ready",
    )
    live = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5)
    assert live.status_code == 200
    assert live.json()["status"] == "ok"

    process.signal(signal.SIGTERM)
    assert process.wait(30) == 0
    text = process.log_path.read_text()
    assert "sk_test_observed_key_123" not in text
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert entries, "JSON log lines"
    dead = [e for e in entries if e["message"].startswith("dead-lettering record")]
    assert len(dead) == sum(expected.bad.values()), "a line per dead-lettered record"
    for entry in dead:
        assert {"topic", "partition", "offset", "reason"} <= set(entry), entry
    assert Counter(e["reason"] for e in dead) == expected.bad
    world.assert_exactly_once(expected)


def test_workers_share_the_group_and_one_metrics_endpoint(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=4)
    expected = world.produce_samples(4000)
    port = free_port()
    # Paced (500 events/s per worker) so that the second worker joins before the first
    # has billed everything.
    config = world.config(
        metrics={"enabled": True, "host": "127.0.0.1", "port": port},
        rate_limit={"account_events_per_second": 1000},
    )
    process = world.connector(config, workers=2)
    wait_until(
        lambda: (
            {
                int(worker)
                for worker in re.findall(
                    r"assigned (?!nothing).*worker=(\d)", process.log_path.read_text()
                )
            }
            == {0, 1}
        ),
        timeout=60,
        what="each worker to be assigned partitions",
    )

    def both_ready() -> Any:
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        except httpx.HTTPError:
            return None
        body = answer.json()
        return body if answer.status_code == 200 and len(body["workers"]) == 2 else None

    wait_until(both_ready, timeout=60, what="both workers ready")
    series = wait_until(
        lambda: (s := scrape(port)).get("meterstream_events_sent_total") == expected.events and s,
        timeout=60,
        what="the summed events_sent of both workers",
    )
    assert series["meterstream_assigned_partitions"] == 4, "the partitions are split, not shared"
    process.signal(signal.SIGTERM)
    assert process.wait(30) == 0, process.log_tail()
    world.assert_exactly_once(expected)
    world.assert_all_committed()


def test_workers_do_not_outlive_a_killed_supervisor(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    import psutil

    world = world_factory(partitions=2)
    process = world.connector(world.config(), workers=2)
    assert process.proc is not None
    supervisor = psutil.Process(process.proc.pid)

    def spawned() -> list[psutil.Process] | None:
        children = [c for c in supervisor.children() if "spawn_main" in " ".join(c.cmdline())]
        return children if len(children) == 2 else None

    workers = wait_until(spawned, timeout=30, what="two worker processes")
    wait_until(
        lambda: process.log_path.read_text().count("consuming ") == 2,
        timeout=30,
        what="both workers consuming",
    )
    process.signal(signal.SIGKILL)
    process.wait(10)
    _gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"orphan workers still running: {alive}"


#: How long the broker stays unreachable: the window of logging.repeat_seconds' default.
BROKER_DOWN_SECONDS = 30.0


def test_a_down_broker_is_reported_not_flooded(tmp_path: Path) -> None:
    """librdkafka reports a refused connect ~20 times a second; the log says it once."""
    config = write_config(
        tmp_path,
        bootstrap=f"127.0.0.1:{free_port()}",  # nothing listens there
        topic="usage",
        dead_letter_topic="usage.dlq",
        group_id="down",
        stripe_url="http://127.0.0.1:9",
    )
    process = ConnectorProcess(config, log_dir=tmp_path).start()
    try:
        started = time.monotonic()
        wait_until(
            lambda: "Connect to" in process.log_path.read_text(errors="replace"),
            timeout=30,
            what="the first refused connection to be logged",
        )
        # The outage itself is what is under test: let it last its 30 s.
        while time.monotonic() - started < BROKER_DOWN_SECONDS:
            assert process.proc is not None
            assert process.proc.poll() is None, process.log_tail()
            time.sleep(0.5)
        lines = process.log_path.read_text(errors="replace").splitlines()
    finally:
        process.signal(signal.SIGTERM)
        process.wait(timeout=60)
    problems = [line for line in lines if " WARNING " in line or " ERROR " in line]
    assert any("Connect to" in line for line in problems)
    # One line per distinct problem (a refused connect, all brokers down, ...), not 600.
    assert len(problems) <= 12, "\n".join(problems)


#: The topic's retention in the lag test: an hour.
RETENTION_SECONDS = 3600


def test_lag_age_grows_while_stripe_is_down_and_retention_headroom_falls(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1, outage=True)
    alter_topic_config(
        world.bootstrap, world.topic, {"retention.ms": str(RETENTION_SECONDS * 1000)}
    )
    world.produce_samples(50)
    port = free_port()
    world.connector(world.config(metrics={"enabled": True, "host": "127.0.0.1", "port": port}))
    age = f'meterstream_consumer_lag_seconds{{partition="0",topic="{world.topic}"}}'
    headroom = f'meterstream_retention_headroom_seconds{{topic="{world.topic}"}}'

    def reading() -> dict[str, float] | None:
        try:
            series = scrape(port)
        except httpx.HTTPError:
            return None
        return series if age in series and headroom in series else None

    first = wait_until(reading, timeout=60, what="lag age and retention headroom")
    later = wait_until(
        lambda: (s := reading()) is not None and s[age] >= first[age] + 2 and s,
        timeout=60,
        what="the lag age to grow while Stripe is down",
    )
    assert later[headroom] <= RETENTION_SECONDS - later[age] + 1.5  # sampled a moment apart
    assert later[headroom] < first[headroom]
    world.emulator.configure(outage=False)
    caught_up = wait_until(
        lambda: (s := reading()) is not None and s[age] == 0 and s,
        timeout=60,
        what="the lag age to fall to 0 once everything is billed",
    )
    assert caught_up[headroom] == RETENTION_SECONDS
