"""One exception hierarchy for meterstream, named for what the caller must do.

    MeterstreamError
    ├── ConfigError              stop: the configuration is wrong (exit code 2)
    ├── RecordError              dead-letter this record, with ``reason``
    ├── StripeError              raised only by ``sink``; foreign errors translated there once
    │   ├── BackoffError         outage (429, 5xx, timeout, connection): wait, retry, never DLQ
    │   ├── AuthenticationError  the API key was refused: not ready, retry slowly, never DLQ
    │   ├── SessionExpiredError  the session token expired: renew, resend the same batch once
    │   └── RejectedBatchError   refused as invalid: split, dead-letter the culprits
    ├── DeadLetterError          the dead-letter topic cannot be written: hold commits, not ready
    └── LocalKafkaError          the local development broker could not be fetched or started

Messages never contain API keys or session tokens (DESIGN 3.7).
"""

from __future__ import annotations

from typing import Literal

DeadLetterReason = Literal[
    "invalid_json",  # not UTF-8, or not JSON
    "schema_violation",  # JSON, but not an object of the expected shape
    "mapping_error",  # a mapped field is missing or empty (customer, event name, ...)
    "invalid_value",  # value not a whole number, over 15 digits, or negative when not allowed
    "timestamp_out_of_range",  # outside Stripe's window: 35 days back, 5 minutes ahead
    "record_too_large",  # over records.max_bytes, or an event over Stripe's limits
    "rejected_by_stripe",  # Stripe answered 4xx (not 401/429) for this event alone
    "session_expired",  # still refused as expired after a session renewal and one resend
    "no_active_meter",  # no active Stripe meter has this event name: Stripe would drop it
    "meter_payload_mismatch",  # the meter reads customer or value under other payload keys
]

#: Every reason code, in documentation order; DLQ consumers can rely on these strings.
DEAD_LETTER_REASONS: tuple[DeadLetterReason, ...] = (
    "invalid_json",
    "schema_violation",
    "mapping_error",
    "invalid_value",
    "timestamp_out_of_range",
    "record_too_large",
    "rejected_by_stripe",
    "session_expired",
    "no_active_meter",
    "meter_payload_mismatch",
)


class MeterstreamError(Exception):
    """Base of every error meterstream raises on purpose."""


class ConfigError(MeterstreamError):
    """The configuration is invalid; ``problems`` lists (key, message) pairs to fix."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = [f"{key}: {message}" for key, message in problems]
        if len(lines) == 1:  # the common case reads as one line
            super().__init__(f"invalid configuration: {lines[0]}")
        else:
            super().__init__("invalid configuration:\n  " + "\n  ".join(lines))


class RecordError(MeterstreamError):
    """A record cannot become a valid meter event; it goes to the dead-letter topic."""

    def __init__(self, reason: DeadLetterReason, message: str) -> None:
        self.reason: DeadLetterReason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


class StripeError(MeterstreamError):
    """A failed call to Stripe; ``request_id`` is Stripe's ``Request-Id`` when known."""

    def __init__(
        self, message: str, *, status: int | None = None, request_id: str | None = None
    ) -> None:
        self.status = status
        self.request_id = request_id
        super().__init__(message)


class BackoffError(StripeError):
    """Stripe is unavailable or limiting us: wait ``retry_after`` seconds (if known), retry."""

    def __init__(
        self,
        message: str,
        *,
        cause: Literal["rate_limited", "server_error", "timeout", "connection"],
        retry_after: float | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, request_id=request_id)
        self.cause = cause
        self.retry_after = retry_after


class AuthenticationError(StripeError):
    """The API key (or a non-expired session token) was refused: a config or outage problem."""


class SessionExpiredError(StripeError):
    """The meter event session token expired: renew the session and resend the batch."""


class RejectedBatchError(StripeError):
    """Stripe refused the batch as invalid (4xx other than 401/429); ``code`` is Stripe's."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, request_id=request_id)
        self.code = code


class DeadLetterError(MeterstreamError):
    """A record could not be written to the dead-letter topic; its offset stays uncommitted."""


class LocalKafkaError(MeterstreamError):
    """The local development broker could not be fetched or started; the message says why."""
