"""Schema Registry record values (Confluent wire format) to the plain dicts the mapper takes.

A value is a magic byte ``0``, a 4-byte big-endian schema id, (Protobuf only) the message
indexes, then the payload. confluent-kafka's own deserializers (``AvroDeserializer``,
``ProtobufDeserializer``, ``JSONDeserializer``) decode it with the schema the registry holds
under that id; the registry client caches schemas by id, so a schema is fetched once per
process (docs/schema-registry.md).

What they return is normalised here, so ``mapping`` sees what a JSON record would hold:
Avro ``timestamp-millis``/``-micros`` and Protobuf ``google.protobuf.Timestamp`` become
RFC 3339 strings in the canonical wire form, nested records stay dicts, Protobuf messages
become dicts (every field of a proto3 message, zero values included, as the JSON of it
would be), ``decimal`` becomes a whole number when it is one, ``uuid``/``date``/``time``
become strings.

Failures are sorted by who must act: the record (``RecordError`` with ``invalid_encoding``:
not in the wire format, a schema id the registry does not have, a payload that does not
decode with its schema) or the registry (``RegistryUnavailableError``: unreachable, timeout,
5xx, credentials refused; the record waits).
"""

from __future__ import annotations

import datetime
import decimal
import io
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from connector.config import MeterstreamConfig, RecordFormat, SchemaRegistryConfig
from connector.errors import RecordError, RegistryUnavailableError
from connector.mapping import kind_of
from connector.timestamps import format_rfc3339_ms

#: The first byte of every Confluent wire-format value.
MAGIC_BYTE = 0
#: Magic byte plus the 4-byte schema id.
HEADER_BYTES = 5
#: HTTP status of a schema id the registry does not have.
NOT_FOUND = 404
#: How long "the registry does not have schema id N" is believed before asking again.
MISSING_TTL_SECONDS = 60.0
#: Plain values: returned as they are, without a look inside.
_PLAIN = (str, int, float, bool, type(None))

Deserializer = Callable[[bytes, Any], Any]


def _no_subject(*_args: Any) -> None:
    """Subject name strategy: none. The writer's schema id alone decides how a value reads
    (no subject lookups, no "latest version" reader schemas, no per-record requests)."""


#: The same for every deserializer: the writer's schema, nothing else.
_DESERIALIZER_CONF: dict[str, Any] = {"subject.name.strategy": _no_subject}


def value_decoder(config: MeterstreamConfig) -> Callable[[bytes | None], dict[str, Any]]:
    """``records.decode`` for JSON, else a registry decode that may block on a fetch: for
    the commands that read records outside the consume loop (``replay``, ``reconcile``).
    A registry outage raises RegistryUnavailableError, which ends them with its message."""
    from connector import records

    max_bytes = config.records.max_bytes
    if config.records.format == "json":
        return lambda value: records.decode(value, max_bytes)
    decoder = RegistryDecoder(config.schema_registry, config.records.format)

    def decode(value: bytes | None) -> dict[str, Any]:
        if value is not None and len(value) > max_bytes:
            raise RecordError(
                "record_too_large",
                f"record value is {len(value)} bytes, over records.max_bytes ({max_bytes})",
            )
        return decoder.decode(value)

    return decode


class RegistryDecoder:
    """Decodes one format's wire-format values with schemas from one registry (thread-safe).

    ``cached(value)`` says whether a value's schema has been fetched already: then
    ``decode`` needs no network (normally); otherwise the first ``decode`` of that schema id
    asks the registry and may block for up to ``request_timeout_seconds``.
    """

    def __init__(self, registry: SchemaRegistryConfig, record_format: RecordFormat) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        if record_format == "json":
            raise ValueError("records.format json needs no Schema Registry decoder")
        self.format = record_format
        self._client = SchemaRegistryClient(registry.client_conf())
        #: Schema ids whose schema the client holds.
        self._fetched: set[int] = set()
        #: Schema ids the registry said it does not have, until when that answer is trusted:
        #: a stream of values naming unknown ids costs one request per id per minute.
        self._missing: dict[int, tuple[float, str]] = {}
        self._clock = time.monotonic
        self._lock = threading.Lock()
        #: Protobuf: one deserializer per (schema id, message indexes), built on first use.
        self._protobuf: dict[tuple[int, tuple[int, ...]], Deserializer] = {}
        self._fmt = "serialized" if record_format == "protobuf" else None
        self._shared: Deserializer | None = None
        if record_format == "avro":
            from confluent_kafka.schema_registry.avro import AvroDeserializer

            self._shared = AvroDeserializer(self._client, conf=_DESERIALIZER_CONF)
        elif record_format == "json_schema":
            from confluent_kafka.schema_registry.json_schema import JSONDeserializer

            self._shared = JSONDeserializer(
                None, conf=_DESERIALIZER_CONF, schema_registry_client=self._client
            )

    def schema_id(self, value: bytes | None) -> int:
        """The schema id a value names; RecordError when it is not in the wire format."""
        if value is None:
            raise RecordError("invalid_encoding", "record has no value (null, e.g. a tombstone)")
        if len(value) < HEADER_BYTES or value[0] != MAGIC_BYTE:
            found = f"{len(value)} bytes starting with 0x{value[0]:02x}" if value else "empty"
            raise RecordError(
                "invalid_encoding",
                f"record value is not in the Confluent wire format of records.format "
                f"{self.format}: {found}, expected the magic byte 0x00 and a 4-byte schema id",
            )
        return int.from_bytes(value[1:HEADER_BYTES], "big")

    def cached(self, value: bytes | None) -> bool:
        """Whether decoding ``value`` needs no registry request (also true for a bad value)."""
        if value is None or len(value) < HEADER_BYTES or value[0] != MAGIC_BYTE:
            return True
        schema_id = int.from_bytes(value[1:HEADER_BYTES], "big")
        if schema_id in self._fetched:
            return True
        missing = self._missing.get(schema_id)
        return missing is not None and missing[0] > self._clock()

    def decode(self, value: bytes | None) -> dict[str, Any]:
        """The record as the mapper takes it; RecordError or RegistryUnavailableError."""
        schema_id = self.schema_id(value)
        assert value is not None
        if schema_id not in self._fetched:
            self._fetch(schema_id)
        deserialize = self._shared or self._protobuf_deserializer(schema_id, value)
        try:
            decoded = deserialize(value, None)
        except Exception as exc:
            _raise_registry_failure(exc, schema_id)
            raise RecordError(
                "invalid_encoding",
                f"record value does not decode with schema id {schema_id} "
                f"({self.format}): {_describe(exc)}",
            ) from None
        record = _plain(decoded) if self.format == "protobuf" else _normalised(decoded)
        if type(record) is not dict:
            raise RecordError(
                "schema_violation",
                f"record decodes (schema id {schema_id}) to {kind_of(record)}, not a record",
            )
        return record

    def _fetch(self, schema_id: int) -> None:
        """Ask the registry for the schema (cached by the client from then on)."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        missing = self._missing.get(schema_id)
        if missing is not None and missing[0] > self._clock():
            raise RecordError("invalid_encoding", missing[1])
        try:
            self._client.get_schema(schema_id, fmt=self._fmt)
        except SchemaRegistryError as exc:
            if exc.http_status_code == NOT_FOUND:
                message = (
                    f"record value names schema id {schema_id}, which the Schema Registry "
                    f"does not have ({exc.error_message})"
                )
                with self._lock:
                    self._missing[schema_id] = (self._clock() + MISSING_TTL_SECONDS, message)
                raise RecordError("invalid_encoding", message) from None
            raise RegistryUnavailableError(
                f"Schema Registry answered HTTP {exc.http_status_code} for schema id "
                f"{schema_id}: {exc.error_message}"
            ) from None
        except Exception as exc:
            raise RegistryUnavailableError(
                f"Schema Registry unreachable fetching schema id {schema_id}: {_describe(exc)}"
            ) from None
        with self._lock:
            self._fetched.add(schema_id)

    def _protobuf_deserializer(self, schema_id: int, value: bytes) -> Deserializer:
        """The deserializer for the message type this value names in its schema.

        ``ProtobufDeserializer`` decodes into one given message class; the class comes from
        the writer's schema (fetched and cached) and the message indexes after the id.
        """
        from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
        from confluent_kafka.schema_registry.serde import SchemaId
        from google.protobuf import empty_pb2
        from google.protobuf.message_factory import GetMessageClass

        try:
            header = SchemaId("PROTOBUF")
            header.from_bytes(io.BytesIO(value))
            indexes = tuple(header.message_indexes or [0])
        except Exception as exc:
            raise RecordError(
                "invalid_encoding",
                f"record value has no valid Protobuf message indexes after schema id "
                f"{schema_id}: {_describe(exc)}",
            ) from None
        key = (schema_id, indexes)
        found = self._protobuf.get(key)
        if found is not None:
            return found
        # A deserializer of any type reads the writer's schema into a descriptor pool.
        probe = ProtobufDeserializer(empty_pb2.Empty, _DESERIALIZER_CONF, self._client)
        try:
            schema = self._client.get_schema(schema_id, fmt=self._fmt)
            file_proto, pool = probe._get_parsed_schema(schema)
            descriptor = probe._get_message_desc(
                pool, pool.FindFileByName(file_proto.name), list(indexes)
            )
        except Exception as exc:
            _raise_registry_failure(exc, schema_id)
            raise RecordError(
                "invalid_encoding",
                f"record value names message {list(indexes)} of schema id {schema_id}, "
                f"which that schema does not define usably: {_describe(exc)}",
            ) from None
        deserializer: Deserializer = ProtobufDeserializer(
            GetMessageClass(descriptor), _DESERIALIZER_CONF, self._client
        )
        self._protobuf[key] = deserializer
        return deserializer


def _raise_registry_failure(exc: Exception, schema_id: int) -> None:
    """Re-raise a registry or transport failure met while decoding as the outage it is."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    if isinstance(exc, SchemaRegistryError):
        if exc.http_status_code == NOT_FOUND:
            raise RecordError(
                "invalid_encoding",
                f"schema id {schema_id} refers to a schema the Schema Registry does not "
                f"have ({exc.error_message})",
            ) from None
        raise RegistryUnavailableError(
            f"Schema Registry answered HTTP {exc.http_status_code} for schema id "
            f"{schema_id}: {exc.error_message}"
        ) from None
    if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in (
        "httpx",
        "httpx2",
        "httpcore",
        "authlib",
    ):
        raise RegistryUnavailableError(
            f"Schema Registry unreachable decoding schema id {schema_id}: {_describe(exc)}"
        ) from None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _normalised(value: Any) -> Any:
    """Avro and JSON Schema values as JSON would hold them (logical types to text)."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(item) not in _PLAIN:
                value[key] = _normalised(item)
        return value
    if kind in _PLAIN:
        return value
    if kind is list:
        return [item if type(item) in _PLAIN else _normalised(item) for item in value]
    if isinstance(value, datetime.datetime):
        return _timestamp_text(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value  # bytes and anything else: the mapper names the field's wrong kind


def _timestamp_text(moment: datetime.datetime) -> str:
    """A datetime as the mapper's canonical RFC 3339 text (naive: UTC, as Avro means it)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    try:
        return format_rfc3339_ms(moment.timestamp())
    except ValueError:
        return moment.isoformat()


def _plain(message: Any) -> Any:
    """A Protobuf message as a dict: every field of it, as its JSON would hold it."""
    descriptor = message.DESCRIPTOR
    plan = _PLANS.get(descriptor)
    if plan is None:
        plan = _PLANS[descriptor] = _plan(descriptor)
    if callable(plan):
        return plan(message)
    result: dict[str, Any] = {}
    for name, presence, convert in plan:
        if presence and not message.HasField(name):
            continue  # an unset message, optional or oneof member: absent, as in JSON
        value = getattr(message, name)
        result[name] = value if convert is None else convert(value)
    return result


#: Per message type, how to read it: a function for the well-known types, else per field
#: (name, whether it can be unset, how to convert its value: None for a plain scalar).
_Plan = Callable[[Any], Any] | list[tuple[str, bool, Callable[[Any], Any] | None]]
_PLANS: dict[Any, _Plan] = {}


def _plan(descriptor: Any) -> _Plan:
    """How ``_plain`` reads messages of this type (worked out once per type)."""
    full_name = descriptor.full_name
    if full_name == "google.protobuf.Timestamp":
        return _timestamp_message
    if full_name in _WRAPPERS:
        return lambda message: message.value
    if full_name in _JSON_TYPES:
        from google.protobuf import json_format

        to_dict: Callable[[Any], Any] = json_format.MessageToDict
        return to_dict
    fields: list[tuple[str, bool, Callable[[Any], Any] | None]] = []
    for field in descriptor.fields:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            item = _converter(entry.fields_by_name["value"])
            convert: Callable[[Any], Any] | None = dict if item is None else _map_of(item)
        elif _is_repeated(field):
            item = _converter(field)
            convert = list if item is None else _list_of(item)
        else:
            convert = _converter(field)
        fields.append((field.name, bool(field.has_presence), convert))
    return fields


def _converter(field: Any) -> Callable[[Any], Any] | None:
    """How one value of ``field`` becomes JSON-like: None when it already is."""
    from google.protobuf.descriptor import FieldDescriptor

    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _plain
    if field.type == FieldDescriptor.TYPE_ENUM:
        names = {value.number: value.name for value in field.enum_type.values}
        return lambda number: names.get(number, number)
    return None


def _list_of(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda values: [convert(value) for value in values]


def _map_of(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda values: {key: convert(value) for key, value in values.items()}


def _is_repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 5.28; label before
    if repeated is not None:
        return bool(repeated)
    from google.protobuf.descriptor import FieldDescriptor

    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def _timestamp_message(message: Any) -> Any:
    seconds = message.seconds + message.nanos / 1e9
    try:
        return format_rfc3339_ms(seconds)
    except ValueError:
        return seconds


#: Protobuf's JSON-valued types: their JSON is what the mapper reads.
_JSON_TYPES = frozenset(
    ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")
)
#: Protobuf's wrapper types: their JSON is the wrapped value.
_WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
