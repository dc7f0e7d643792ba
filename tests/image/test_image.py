"""The container image, built from the repository's Dockerfile and run for real.

The image runs the way the Helm chart runs it (uid 10001, read-only root filesystem with
an empty /tmp, no capabilities, the config mounted at /etc/meterstream/meterstream.yaml),
on the host network so it reaches the session's broker and the emulator on loopback. It
must bill the demo's records exactly, dead-letter the bad ones, answer its probes, and
exit 0 on SIGTERM. Its contents are checked too: no compiler, no installer, and nothing
of the local world (emulator, local Kafka, demo), which ships as meterstream-local.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from meterstream_local import demo
from tests.image import podman as engine
from tests.image.conftest import FIGURES
from tests.integration.harness import (
    ConnectorProcess,
    end_offsets,
    free_port,
    headers_of,
    read_topic,
    scrape,
    wait_until,
)
from tests.integration.test_connector import World, world_factory  # noqa: F401 - fixture

#: A fresh machine installs podman, makes the base image and builds every layer inside the
#: first test's setup (about 5 minutes on 2 busy cores); later sessions take seconds.
pytestmark = [pytest.mark.integration, pytest.mark.image, pytest.mark.timeout(1200)]

#: The uid:gid the Dockerfile and the chart's securityContext agree on.
IMAGE_USER = "10001:10001"
#: Billing 20,000 records takes seconds; the bound is for a busy 2-core machine.
BILL_TIMEOUT_SECONDS = 120
#: The connector's drain on SIGTERM (shutdown.drain_timeout_seconds in the test config) and
#: the container's own stop, with room to spare.
STOP_TIMEOUT_SECONDS = 60
#: Importable names that belong to local development, never to the runtime image.
LOCAL_TOOLING = ("uvicorn", "rich", "testcontainers", "meterstream_local")
#: The chart's container args, with two workers: the supervisor keeps its metrics and status
#: files in /tmp, the one writable path (an emptyDir in the chart, a tmpfs here).
CHART_ARGS = ("run", "--config", "/etc/meterstream/meterstream.yaml", "--workers", "2")


class ImageProcess(ConnectorProcess):
    """The image run in the foreground by ``podman run`` (signals reach the connector).

    ``--init`` puts catatonit at PID 1 to pass SIGTERM on; podman forwards the signals it
    receives to the container (sig-proxy), so ``signal()`` works as for a local process.
    """

    def __init__(
        self, podman: engine.Podman, image: str, config: Path, *, log_dir: Path, api_key: str
    ) -> None:
        super().__init__(config, log_dir=log_dir, api_key=api_key, extra_env=podman.env)
        self.podman = podman
        self.name = f"meterstream-test-{uuid.uuid4().hex[:10]}"
        self.args = podman.command(
            "run",
            "--rm",
            "--name",
            self.name,
            "--init",
            "--pull=never",
            "--network",
            "host",
            "--read-only",
            "--read-only-tmpfs=false",
            "--tmpfs",
            "/tmp",
            "--user",
            IMAGE_USER,
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--volume",
            f"{config}:/etc/meterstream/meterstream.yaml:ro",
            "--env",
            "STRIPE_API_KEY",  # the value comes from podman's environment, not its argv
            image,
            *CHART_ARGS,
        )

    def ensure_stopped(self) -> None:
        self.podman.remove_container(self.name)
        super().ensure_stopped()


def demo_defaults() -> argparse.Namespace:
    """What ``meterstream demo`` produces when run without flags."""
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args([])


def emulator_stats(base_url: str) -> dict[str, Any]:
    """``GET /_emulator/stats``: what the emulator accepted, as the connector's peer saw it."""
    report: dict[str, Any] = httpx.get(f"{base_url}/_emulator/stats", timeout=10).json()
    return report


def probe(port: int, path: str) -> int:
    """The status code of a health endpoint (0 while nothing answers)."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def in_image(podman: engine.Podman, image: str, script: str) -> Any:
    """Run a Python ``script`` in the image as its default user; the JSON it prints."""
    output = podman.run(
        "run",
        "--rm",
        "--pull=never",
        "--network",
        "host",
        "--read-only",
        "--entrypoint",
        "python3",
        image,
        "-c",
        script,
    )
    return json.loads(output)


def test_the_image_bills_the_demo_records_answers_probes_and_stops_on_sigterm(
    podman: engine.Podman,
    built_image: engine.BuiltImage,
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    sample = demo_defaults()
    world = world_factory(partitions=sample.partitions)
    expected = world.produce_samples(
        sample.records, bad_every=sample.bad_every, customers=sample.customers
    )
    bad = sum(expected.bad.values())
    assert bad > 0, "the demo's records include bad ones"
    port = free_port()
    config = world.config(metrics={"enabled": True, "host": "127.0.0.1", "port": port})
    process = ImageProcess(
        podman,
        built_image.reference,
        config,
        log_dir=world.tmp_path,
        api_key="sk_test_meterstream_image",
    )
    world.processes.append(process)
    started = time.monotonic()
    process.start()

    def billed_everything() -> bool:
        events = emulator_stats(world.emulator.base_url)["events"]
        dead = end_offsets(world.bootstrap, world.dead_letter_topic, 1)[0]
        assert process.proc is not None
        assert process.proc.poll() is None, f"the container exited:\n{process.log_tail()}"
        return bool(events["accepted"] == expected.events and dead == bad)

    wait_until(billed_everything, timeout=BILL_TIMEOUT_SECONDS, what="the image to bill the demo")
    FIGURES["bill 20k demo records"] = f"{time.monotonic() - started:.1f} s (start-up included)"

    world.assert_exactly_once(expected)
    assert emulator_stats(world.emulator.base_url)["events"]["duplicates"] == 0
    letters = read_topic(world.bootstrap, world.dead_letter_topic, expect=bad)
    assert Counter(headers_of(m)["meterstream.reason"] for m in letters) == expected.bad
    assert wait_until(
        lambda: probe(port, "/readyz") == 200, timeout=30, what="/readyz to say ready"
    )
    assert probe(port, "/livez") == 200
    assert scrape(port)["meterstream_events_sent_total"] == expected.events

    process.signal(signal.SIGTERM)
    code = process.wait(STOP_TIMEOUT_SECONDS)
    assert code == 0, f"exit {code} on SIGTERM; log tail:\n{process.log_tail()}"
    world.assert_all_committed()
    log = process.log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert "sk_test_meterstream_image" not in log


def test_the_image_runs_as_uid_10001_read_only_without_compiler_or_installer(
    podman: engine.Podman, built_image: engine.BuiltImage
) -> None:
    config = podman.inspect_image(built_image.reference)["Config"]
    assert config["User"] == IMAGE_USER
    assert config["Entrypoint"] == ["meterstream"]
    assert config["Cmd"] == ["run", "--config", "/etc/meterstream/meterstream.yaml"]
    found = in_image(
        podman,
        built_image.reference,
        "import glob, importlib.util, json, os, shutil, sys\n"
        "compilers = ['cc', 'c++', 'gcc', 'g++', 'clang', 'tcc', 'ld', 'as', 'make']\n"
        "found = [c for c in compilers if shutil.which(c)]\n"
        "found += glob.glob('/usr/bin/*-gcc*') + glob.glob('/usr/local/bin/*-gcc*')\n"
        "try:\n"
        "    open('/opt/meterstream/probe', 'w')\n"
        "    writable = True\n"
        "except OSError:\n"
        "    writable = False\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'prefix': sys.prefix,\n"
        "    'compilers': found, 'pip': importlib.util.find_spec('pip') is not None,\n"
        "    'writable': writable}))\n",
    )
    assert (found["uid"], found["gid"]) == (10001, 10001)
    assert found["prefix"] == "/opt/meterstream"
    assert found["compilers"] == []
    assert found["pip"] is False, "the application's environment can install nothing"
    assert found["writable"] is False


def test_the_image_holds_no_local_tooling(
    podman: engine.Podman, built_image: engine.BuiltImage
) -> None:
    found = in_image(
        podman,
        built_image.reference,
        "import importlib.util, json\n"
        f"names = {list(LOCAL_TOOLING)!r}\n"
        "print(json.dumps([n for n in names if importlib.util.find_spec(n) is not None]))\n",
    )
    assert found == []
