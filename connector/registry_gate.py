"""Schema Registry records on the hot path: decode now, or hold until the registry answers.

A value whose schema the decoder holds already is decoded on the loop (no network). The
first value of a schema id not seen yet is held, with every record after it, and its
schema is fetched on a thread of its own, so a slow registry never stalls the loop. A fetch
that fails because the registry is unreachable, times out or answers 5xx is an outage: the
records stay held (unresolved, so nothing is committed past them), the worker pauses
fetching and reports not ready, and the fetch is tried again with backoff until the
registry is back (docs/schema-registry.md). Nothing is dead-lettered for an outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from connector.errors import RecordError, RegistryUnavailableError
from connector.offsets import PendingRecord
from connector.registry_decode import RegistryDecoder

log = logging.getLogger("meterstream.registry")

#: Backoff between attempts while the registry cannot answer.
RETRY_INITIAL_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0

#: A held record's outcome once the registry answered: its record dict, or why it is refused.
Decoded = tuple[PendingRecord, dict[str, Any] | RecordError]


class RegistryGate:
    """Decodes records through ``decoder``; holds those that need the registry first."""

    def __init__(
        self,
        decoder: RegistryDecoder,
        *,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._decoder = decoder
        self._max_bytes = max_bytes
        self._clock = clock
        self._held: list[PendingRecord] = []
        self._task: asyncio.Future[list[Decoded]] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="schema-registry")
        self._retry_at = 0.0
        self._failed_attempts = 0
        #: Why the last attempt failed (written by the registry thread), or None.
        self._failure: str | None = None

    @property
    def problem(self) -> str | None:
        """Why records wait for the registry (not ready), or None: nothing waits for it."""
        return self._failure if self._held else None

    @property
    def blocked(self) -> bool:
        """Whether records wait for a registry that failed its last attempt (pause fetching)."""
        return self.problem is not None

    @property
    def held(self) -> int:
        """Records waiting for the registry."""
        return len(self._held)

    def decode(self, record: PendingRecord, value: bytes | None) -> dict[str, Any] | None:
        """The record's dict now, or None when it is held; RecordError to dead-letter it."""
        if value is not None and len(value) > self._max_bytes:
            raise RecordError(
                "record_too_large",
                f"record value is {len(value)} bytes, over records.max_bytes ({self._max_bytes})",
            )
        decoder = self._decoder
        if self._held or not decoder.cached(value):
            # Once one record waits for the registry, later ones wait behind it: an outage
            # holds everything fetched, and fetching pauses, until the registry answers.
            self._held.append(record)
            return None
        try:
            return decoder.decode(value)
        except RegistryUnavailableError:
            self._held.append(record)  # a schema's references, say: fetched on the thread
            return None

    def turn(self) -> list[Decoded]:
        """Start a due attempt for the held records; when one ended, what it decoded."""
        released: list[Decoded] = []
        task = self._task
        if task is not None and task.done():
            self._task = None
            released = self._finish(task)
        if self._task is None and self._held and self._clock() >= self._retry_at:
            batch = list(self._held)
            loop = asyncio.get_running_loop()
            self._task = loop.run_in_executor(self._executor, self._decode_held, batch)
        return released

    def _decode_held(self, batch: list[PendingRecord]) -> list[Decoded]:
        """On the registry thread: decode in order until the registry fails (the rest wait)."""
        decoded: list[Decoded] = []
        for record in batch:
            if record.partition.closed:
                continue  # revoked meanwhile: the next owner reads it again
            try:
                decoded.append((record, self._decoder.decode(record.message.value())))
            except RecordError as exc:
                decoded.append((record, exc))
            except RegistryUnavailableError as exc:
                self._failure = str(exc)
                return decoded
        self._failure = None
        return decoded

    def _finish(self, task: asyncio.Future[list[Decoded]]) -> list[Decoded]:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            log.error("decoding held records failed unexpectedly", exc_info=failure)
            self._failure = f"decoding held records failed: {failure}"
            decoded: list[Decoded] = []
        else:
            decoded = task.result()
        done = {id(record) for record, _outcome in decoded}
        self._held = [
            record
            for record in self._held
            if id(record) not in done and not record.partition.closed
        ]
        if self._failure is None:
            if self._failed_attempts:
                log.info("Schema Registry answers again: %d held records released", len(done))
            self._failed_attempts = 0
            self._retry_at = 0.0
        else:
            self._failed_attempts += 1
            delay = min(RETRY_MAX_SECONDS, RETRY_INITIAL_SECONDS * 2 ** (self._failed_attempts - 1))
            self._retry_at = self._clock() + delay
            log.warning(
                "Schema Registry unavailable, %d records held (retrying in %.1f s): %s",
                len(self._held),
                delay,
                self._failure,
            )
        # Records of partitions revoked meanwhile are the next owner's: not ours to resolve.
        return [(record, outcome) for record, outcome in decoded if not record.partition.closed]

    async def close(self) -> None:
        """Let an attempt in progress end (bounded by the request timeout), then stop."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
