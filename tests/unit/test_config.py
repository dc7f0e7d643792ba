"""Configuration: precedence, validation messages that name the key, secrets redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import load_config
from connector.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meterstream.yaml"
    path.write_text(text)
    return path


def test_defaults_read_the_canonical_record_and_local_broker() -> None:
    config = load_config(environ={})
    assert config.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert config.kafka.auto_offset_reset == "earliest"
    assert config.batching.max_events == 100
    assert config.mapping.customer_payload_key == "stripe_customer_id"
    assert config.stripe.api_key is None


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "kafka:\n  group_id: from-file\n  topics: [a, b]\n")
    config = load_config(
        path,
        environ={"METERSTREAM_KAFKA__GROUP_ID": "from-env", "STRIPE_API_KEY": "sk_test_abc"},
    )
    assert config.kafka.group_id == "from-env"
    assert config.kafka.topics == ["a", "b"]  # the file's value survives a partial override
    assert config.require_api_key().get_secret_value() == "sk_test_abc"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, "batching:\n  linger_ms: 7\n")
    config = load_config(environ={"METERSTREAM_CONFIG": str(path)})
    assert config.batching.linger_ms == 7


def test_every_bad_key_is_named(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "kafka:\n  topics: []\n  bogus: 1\nbatching:\n  max_events: 101\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    keys = [key for key, _ in info.value.problems]
    assert keys == ["kafka.topics", "kafka.bogus", "batching.max_events"]
    assert "unknown key" in str(info.value)


def test_dead_letter_topic_must_not_be_consumed(tmp_path: Path) -> None:
    path = _write(tmp_path, "kafka:\n  topics: [usage]\n  dead_letter_topic: usage\n")
    with pytest.raises(ConfigError, match="dead_letter_topic"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("kafka: [\n", "not valid YAML at line"), ("- a\n- b\n", "mapping of sections")],
)
def test_unreadable_files(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(_write(tmp_path, text), environ={})


def test_missing_file_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config: file not found"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_missing_api_key_says_where_to_put_it() -> None:
    with pytest.raises(ConfigError, match="STRIPE_API_KEY"):
        load_config(environ={}).require_api_key()


def test_secrets_are_redacted(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "kafka:\n  consumer:\n    sasl.password: hunter2\n    sasl.username: bob\n"
        "  secret_env:\n    ssl.key.password: KEY_PASS\n",
    )
    config = load_config(path, environ={"STRIPE_API_KEY": "sk_live_secret", "KEY_PASS": "pw"})
    redacted = config.redacted_dict()
    text = repr(redacted)
    assert "sk_live_secret" not in text
    assert "hunter2" not in text
    assert redacted["kafka"]["consumer"]["sasl.username"] == "bob"
    assert config.kafka.common_properties()["ssl.key.password"] == "pw"
    assert "sk_live_secret" not in repr(config)


def test_secret_env_must_exist(tmp_path: Path) -> None:
    path = _write(tmp_path, "kafka:\n  secret_env:\n    sasl.password: NOT_SET_ANYWHERE\n")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        load_config(path, environ={})


def test_connection_settings_in_consumer_reach_every_client(tmp_path: Path) -> None:
    config = load_config(
        None,
        environ={"KAFKA_SASL_PASSWORD": "hunter2"},
        overrides={
            "kafka": {
                "consumer": {
                    "security.protocol": "SASL_SSL",
                    "sasl.mechanism": "SCRAM-SHA-512",
                    "sasl.username": "meterstream",
                    "ssl.ca.location": "/etc/kafka/ca.crt",
                    "fetch.min.bytes": 1,
                },
                "secret_env": {"sasl.password": "KAFKA_SASL_PASSWORD"},
            }
        },
    )
    common = config.kafka.common_properties()
    assert common["security.protocol"] == "SASL_SSL"
    assert common["sasl.mechanism"] == "SCRAM-SHA-512"
    assert common["ssl.ca.location"] == "/etc/kafka/ca.crt"
    assert common["sasl.password"] == "hunter2"
    assert "fetch.min.bytes" not in common, "consumer tuning stays with the consumer"


def test_aggregation_is_off_by_default_with_the_issue_defaults() -> None:
    aggregation = load_config(environ={}).aggregation
    assert not aggregation.enabled
    assert (aggregation.bucket_seconds, aggregation.max_records, aggregation.max_seconds) == (
        60,
        50_000,
        5.0,
    )
    assert not load_config(environ={}).meters.allow_windowed


def test_aggregation_without_the_meters_list_names_both_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "aggregation:\n  enabled: true\nmeters:\n  preflight: false\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    [(key, message)] = info.value.problems
    assert key == "aggregation.enabled"
    assert "meters.preflight" in message


@pytest.mark.parametrize("seconds", [7, 7200])
def test_a_bucket_must_divide_the_hour(tmp_path: Path, seconds: int) -> None:
    path = _write(tmp_path, f"aggregation:\n  enabled: true\n  bucket_seconds: {seconds}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert [key for key, _ in info.value.problems] == ["aggregation.bucket_seconds"]


def test_a_bucket_dividing_the_hour_is_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path, "aggregation:\n  enabled: true\n  bucket_seconds: 300\n")
    assert load_config(path, environ={}).aggregation.bucket_seconds == 300
