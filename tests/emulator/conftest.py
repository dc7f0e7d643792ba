"""Fixtures for the emulator's tests: one real server on 127.0.0.1 (a free port) for the
whole session, reset before every test, and an httpx client pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from meterstream_local.emulator import EmulatorServer

from .support import API_KEY


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    """The shared server; tests get it through ``emulator`` (which resets it first)."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> EmulatorServer:
    """The emulator with no sessions, no events, no runtime meters and default knobs."""
    emulator_server.reset()
    return emulator_server


@pytest.fixture
def http(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    """A plain HTTP client for the emulator, authenticated with a test API key."""
    with httpx.Client(
        base_url=emulator.base_url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    ) as client:
        yield client
