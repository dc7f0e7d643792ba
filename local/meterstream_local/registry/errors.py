"""The local registry's one error."""

from __future__ import annotations

from connector.errors import MeterstreamError


class LocalRegistryError(MeterstreamError):
    """The local Schema Registry could not be fetched or started; the message says why."""
