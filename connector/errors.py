"""One exception hierarchy for meterstream, named for what the caller must do.

    MeterstreamError
    ├── ConfigError              stop: the configuration is wrong (exit code 2)
    ├── RecordError              dead-letter this record, with ``reason``
    ├── StripeError              raised only by ``sink``; foreign errors translated there once
    │   ├── BackoffError         outage (429, 5xx, timeout, connection, sessions refused
    │   │                        again after a renewal): wait, retry, never DLQ
    │   ├── AuthenticationError  the API key was refused: not ready, retry slowly, never DLQ
    │   ├── SessionExpiredError  the session token expired: renew, resend the same batch
    │   └── RejectedBatchError   refused as invalid: split, dead-letter the culprits
    ├── RegistryUnavailableError  the Schema Registry is unreachable or failing: hold the
    │                        record, pause, retry; never DLQ
    └── LocalKafkaError          the local development broker could not be fetched or started

Each ``StripeError`` class carries ``outcome``, the label it gives the request metrics
(``meterstream_request_duration_seconds``, ``meterstream_retries_total``), so the mapping from
failure to metric lives here, once.

Messages never contain API keys or session tokens (docs/architecture.md, "Secrets").
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
    "no_active_meter",  # no active Stripe meter has this event name: Stripe would drop it
    "meter_payload_mismatch",  # the meter reads customer or value under other payload keys
    "invalid_encoding",  # records.format is a registry format: not in the wire format, an
    # unknown schema id, or not decodable with its schema
    "windowed_meter",  # the meter keeps only the latest event per window (event_time_window)
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
    "no_active_meter",
    "meter_payload_mismatch",
    "invalid_encoding",
    "windowed_meter",
)
#: Reasons earlier versions wrote and this one never does (kept for DLQ readers):
#: ``session_expired``, sessions refused after renewal, is now an outage (retried).
RETIRED_DEAD_LETTER_REASONS: tuple[str, ...] = ("session_expired",)


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

    #: The request's outcome label in metrics.
    outcome: str = "server_error"

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
        cause: Literal["rate_limited", "server_error", "timeout", "connection", "session_expired"],
        retry_after: float | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, request_id=request_id)
        self.cause = cause
        self.outcome = cause
        self.retry_after = retry_after


class AuthenticationError(StripeError):
    """The API key (or a non-expired session token) was refused: a config or outage problem."""

    outcome = "unauthorized"


class SessionExpiredError(StripeError):
    """The meter event session token expired: renew the session and resend the batch."""

    outcome = "session_expired"


class RejectedBatchError(StripeError):
    """Stripe refused the batch as invalid (4xx other than 401/429); ``code`` is Stripe's."""

    outcome = "rejected"

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


class RegistryUnavailableError(MeterstreamError):
    """The Schema Registry could not answer (unreachable, timeout, 5xx, credentials refused):
    an outage, never the record's fault; the record waits until the registry is back."""


class LocalKafkaError(MeterstreamError):
    """The local development broker could not be fetched or started; the message says why."""
