"""``meterstream emulator`` as a real child process, and the package's public surface."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

import meterstream_local.emulator
from connector import cli
from meterstream_local.emulator import EmulatorClient, EmulatorProcess, EmulatorServer, KnobError
from meterstream_local.emulator import cli as emulator_cli

from .support import API_KEY, SESSION, event, send

REPO = Path(__file__).resolve().parents[2]


def test_the_subcommand_is_declared_and_its_parser_builds() -> None:
    [entry] = [e for e in cli.SUBCOMMANDS if e[0] == "emulator"]
    assert entry[1] == "meterstream_local.emulator.cli"
    parser = argparse.ArgumentParser()
    emulator_cli.add_arguments(parser)

    args = parser.parse_args([])

    assert (args.host, args.port, args.session_ttl) == ("127.0.0.1", 12111, 900.0)
    assert args.port == meterstream_local.emulator.DEFAULT_PORT == 12111
    assert callable(emulator_cli.main)


def test_the_cli_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, meterstream_local.emulator.cli, meterstream_local.emulator; "
        "heavy = ('httpx', 'uvicorn', 'orjson', 'stripe', 'yaml'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_public_surface() -> None:
    assert sorted(meterstream_local.emulator.__all__) == [
        "DEFAULT_HOST",
        "DEFAULT_PORT",
        "EmulatorClient",
        "EmulatorError",
        "EmulatorProcess",
        "EmulatorServer",
        "EmulatorState",
        "FailureRule",
        "KnobError",
        "Knobs",
        "Meter",
        "MeterSpecError",
        "load_meters_file",
        "parse_meter_spec",
    ]
    for name in meterstream_local.emulator.__all__:
        assert getattr(meterstream_local.emulator, name) is not None
    with pytest.raises(AttributeError):
        _ = meterstream_local.emulator.NoSuchThing


def test_the_emulator_runs_as_a_process_with_its_flags(tmp_path: Path) -> None:
    meters = tmp_path / "meters.yaml"
    meters.write_text("- event_name: gb_hours\n  formula: last\n")
    flags = [
        "--session-ttl", "30",
        "--meter", "api_requests:count",
        "--meters-file", str(meters),
        "--no-auto-meters",
        "--fail", "2:503",
        "--validation-delay", "0",
        "--customers", "cus_1,cus_2",
        "--drop-customers", "cus_2",
    ]  # fmt: skip
    with EmulatorProcess(flags) as process:
        assert process.base_url.startswith("http://127.0.0.1:")
        with (
            httpx.Client(
                base_url=process.base_url, headers={"Authorization": f"Bearer {API_KEY}"}
            ) as http,
            process.client() as control,
        ):
            session = http.post(SESSION).json()
            created = datetime.fromisoformat(session["created"]).timestamp()
            assert datetime.fromisoformat(
                session["expires_at"]
            ).timestamp() - created == pytest.approx(30)
            token = session["authentication_token"]
            assert send(http, token, [event(name="api_requests")]).status_code == 503  # 2nd
            assert send(http, token, [event(name="api_requests")]).status_code == 200
            assert send(http, token, [event(name="unknown")]).status_code == 200  # dropped later
            dropped = [event(name="api_requests", customer=c) for c in ("cus_2", "cus_3")]
            assert send(http, token, dropped).status_code == 200
            meters_listed = {
                m["event_name"]: m for m in http.get("/v1/billing/meters").json()["data"]
            }

            stats = control.stats()
            assert control.totals("api_requests") == {"cus_1": {"sum": 1, "count": 1, "last": 1}}
            control.configure(outage=True)
            assert send(http, token, [event(name="api_requests")]).status_code == 503
            assert control.expire_sessions() == 1
            assert control.seen("nothing-like-this") is False
            control.reset()
            assert control.stats()["events"]["accepted"] == 0
            assert control.health()

        assert meters_listed["api_requests"]["default_aggregation"]["formula"] == "count"
        assert meters_listed["gb_hours"]["default_aggregation"]["formula"] == "last"
        assert stats["knobs"]["auto_meters"] is False
        assert stats["events"]["dropped_by_code"] == {
            "meter_event_customer_not_found": 2,
            "no_meter": 1,
        }
        assert stats["knobs"]["customers"] == ["cus_1", "cus_2"]
        assert stats["knobs"]["drop_customers"] == ["cus_2"]
        assert stats["knobs"]["validation_delay_seconds"] == 0

        assert process.stop() == 0
    assert "listening on http://127.0.0.1:" in process.output()
    assert "stopped:" in process.output()  # the summary line after SIGTERM
    assert "3 dropped after validation" not in process.output()  # reset before the stop


def test_validation_flags_become_knobs() -> None:
    parser = argparse.ArgumentParser()
    emulator_cli.add_arguments(parser)

    defaults = emulator_cli.knobs_from_args(parser.parse_args([]))
    strict = emulator_cli.knobs_from_args(
        parser.parse_args(["--sync-validation", "--validation-delay", "2.5"])
    )

    assert defaults["validation_delay_seconds"] == 1.0
    assert defaults["sync_validation"] is False
    assert defaults["customers"] is None
    assert strict["sync_validation"] is True
    assert strict["validation_delay_seconds"] == 2.5
    with pytest.raises(KnobError, match="validation_delay_seconds"):
        EmulatorServer(validation_delay_seconds=-1)


def test_sigint_stops_it_cleanly() -> None:
    process = EmulatorProcess().start()
    try:
        with EmulatorClient(process.base_url) as control:
            assert control.health()
        assert process.proc is not None
        process.proc.send_signal(signal.SIGINT)
        assert process.proc.wait(10) == 0
    finally:
        process.stop()


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "meterstream_local.emulator", "--port", str(port)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--meter", "x:median"], "formula"),
        (["--error-rate", "3"], "error_rate"),
        (["--fail", "9-1:500"], "failure rule"),
    ],
)
def test_bad_flags_exit_2_naming_the_problem(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meterstream_local.emulator", "--port", "0", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_a_client_sees_the_in_process_server_too() -> None:
    with EmulatorServer(latency_ms=1) as server, EmulatorClient(server.base_url) as control:
        deadline = time.monotonic() + 5
        assert control.knobs()["latency_ms"] == 1
        control.add_meter("tokens", formula="sum", customer_key="acct")
        assert server.state.meters["tokens"].customer_key == "acct"
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}
        ) as http:
            token = http.post(SESSION).json()["authentication_token"]
            send(http, token, [{"event_name": "tokens", "payload": {"acct": "a", "value": "2"}}])
        stats = control.wait_for(
            lambda s: s["events"]["accepted"] == 1,
            timeout=deadline - time.monotonic(),
            what="1 event",
        )
        assert stats["meters"]["tokens"]["customers"]["a"]["sum"] == 2
