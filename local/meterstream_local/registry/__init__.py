"""A local Schema Registry: Apicurio Registry run from its Maven Central bundle.

    registry()        the one entry point: SCHEMA_REGISTRY_URL if set, else a LocalRegistry
    LocalRegistry     Apicurio Registry (in-memory storage) on a free loopback port
    fetch_bundle()    fetch and unpack the bundle once (python -m meterstream_local.registry fetch)

Its Confluent-compatible API (``url``, under ``/apis/ccompat/v7``) is what
``schema_registry.url`` points at. Only the standard library is imported here.
"""

from __future__ import annotations

from meterstream_local.registry.bundle import APICURIO_VERSION, cached_bundle, fetch_bundle
from meterstream_local.registry.server import (
    CCOMPAT_PATH,
    LocalRegistry,
    LocalRegistryError,
    registry,
)

__all__ = [
    "APICURIO_VERSION",
    "CCOMPAT_PATH",
    "LocalRegistry",
    "LocalRegistryError",
    "cached_bundle",
    "fetch_bundle",
    "registry",
]
