"""Fixtures of the reliability suite, and the plugin that writes its report.

Every test here gets a ``scenario`` row (``report.ScenarioRow``) to fill; when the test
ends the row is stamped with its outcome and duration and joins the session's report,
which is written to ``.meterstream/reliability/`` and printed as a table at the end of the
run (``make reliability``, ``make test``, or ``python -m tests.reliability``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from meterstream_local.emulator import EmulatorServer
from meterstream_local.localkafka import create_topics, delete_topics
from tests.conftest import unique_name
from tests.reliability.report import ReliabilityReport, ScenarioRow
from tests.reliability.world import ReliabilityWorld

_REPORT = ReliabilityReport()
_PHASES_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "soak: minutes long; run by hand (bench/soak.py is the long run)"
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_PHASES_KEY, {})[report.when] = report
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _REPORT.rows:
        _REPORT.write()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _REPORT.rows:
        return
    terminalreporter.write_sep("-", "reliability report")
    terminalreporter.write(_REPORT.table())
    terminalreporter.write_line(f"written to {_REPORT.write()}")


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Iterator[ScenarioRow]:
    """This test's row in the reliability report (filled by the test and its world)."""
    row = ScenarioRow(scenario=request.node.name.removeprefix("test_"))
    started = time.monotonic()
    yield row
    row.duration_seconds = round(time.monotonic() - started, 1)
    phases = request.node.stash.get(_PHASES_KEY, {})
    call = phases.get("call")
    row.outcome = call.outcome if call is not None else "error"
    _REPORT.add(row)


@pytest.fixture
def world_factory(
    kafka_bootstrap: str,
    group_id_factory: Callable[..., str],
    tmp_path: Path,
    scenario: ScenarioRow,
) -> Iterator[Callable[..., ReliabilityWorld]]:
    """``make(partitions=4, *, bootstrap=None, dlq_config=None, **knobs) -> world``.

    ``bootstrap`` defaults to the session's broker (pass a ``local_kafka``'s to use a broker
    the test may stop); topics are created there, and processes, progress thread and
    emulator are cleaned up at the end.
    """
    made: list[ReliabilityWorld] = []

    def make(
        partitions: int = 4,
        *,
        bootstrap: str | None = None,
        dlq_config: dict[str, str] | None = None,
        **knobs: Any,
    ) -> ReliabilityWorld:
        broker = bootstrap or kafka_bootstrap
        slug = scenario.scenario.replace("[", "-").replace("]", "")[:30]
        topic = unique_name(f"rel-{slug}")
        dead_letter_topic = unique_name(f"rel-dlq-{slug}")
        create_topics(broker, {topic: partitions})
        create_topics(broker, {dead_letter_topic: 1}, dlq_config)
        emulator = EmulatorServer(**knobs).start()
        world = ReliabilityWorld(
            bootstrap=broker,
            topic=topic,
            dead_letter_topic=dead_letter_topic,
            group_id=group_id_factory(),
            partitions=partitions,
            emulator=emulator,
            tmp_path=tmp_path,
            row=scenario,
        )
        made.append(world)
        return world

    yield make
    for world in made:
        world.close()
        if scenario.lost is None:
            # The test failed before its verdict: read the figures back for the report.
            try:
                world.verify()
            except Exception as exc:  # the report must not hide the test's own failure
                scenario.notes += f" (figures unavailable: {exc})"

        world.emulator.stop()
        if world.bootstrap == kafka_bootstrap:
            delete_topics(kafka_bootstrap, [world.topic, world.dead_letter_topic])
