"""Stripe's v2 timestamp format, shared by sessions and thin events."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(epoch: float) -> str:
    """``2024-06-01T12:00:00.000Z``: Stripe's v2 timestamp format (milliseconds, UTC)."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
