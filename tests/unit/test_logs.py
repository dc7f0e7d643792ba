"""Log lines: readable or JSON, with record and request context, never a secret."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from connector import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _emit(capsys: pytest.CaptureFixture[str], fmt: str, *args: object, **extra: object) -> str:
    logs.configure("INFO", fmt)
    logging.getLogger("meterstream.test").warning(*args, extra=extra)  # type: ignore[arg-type]
    return capsys.readouterr().err.strip()


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_carry_record_context(capsys: pytest.CaptureFixture[str]) -> None:
    line = _emit(
        capsys, "text", "dead-lettered: %s", "invalid_json", topic="usage", partition=3, offset=42
    )
    assert "WARNING meterstream.test dead-lettered: invalid_json" in line
    assert line.endswith("topic=usage partition=3 offset=42")


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    line = _emit(
        capsys, "json", "retrying after HTTP 500", request_id="req_abc123", event_count=100
    )
    entry = json.loads(line)
    assert entry["message"] == "retrying after HTTP 500"
    assert entry["request_id"] == "req_abc123"
    assert entry["event_count"] == 100
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "meterstream.test"


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.usefixtures("restore_logging")
def test_secrets_never_reach_the_output(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    secrets = [
        "sk_live_51Habcdefghijklmnop",
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        "rk_live_restrictedkey123",
        "mestok_test_AbC-123_xyz",
    ]
    line = _emit(capsys, fmt, "request with %s failed", " and ".join(secrets), reason=secrets[0])
    for secret in secrets:
        assert secret not in line
    assert logs.REDACTED in line


@pytest.mark.usefixtures("restore_logging")
def test_tracebacks_are_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "text")
    try:
        raise RuntimeError("bad key sk_live_51Hsecretsecret")
    except RuntimeError:
        logging.getLogger("meterstream.test").exception("boom")
    output = capsys.readouterr().err
    assert "sk_live_51Hsecretsecret" not in output
    assert "RuntimeError" in output


@pytest.mark.usefixtures("restore_logging")
def test_configure_replaces_handlers_and_sets_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "text")
    logs.configure("ERROR", "text")
    logging.getLogger("meterstream.test").warning("hidden")
    logging.getLogger("meterstream.test").error("shown")
    output = capsys.readouterr().err.strip().splitlines()
    assert len(output) == 1
    assert "shown" in output[0]


def test_throttle_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    now = [0.0]
    throttle = logs.Throttle(interval=30, clock=lambda: now[0])
    assert throttle.allow("down") == 0
    for _ in range(5):
        now[0] += 1
        assert throttle.allow("down") is None
    assert throttle.allow("other") == 0, "keys are throttled separately"
    now[0] += 30
    assert throttle.allow("down") == 5
    assert throttle.allow("down") is None
