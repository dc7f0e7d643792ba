"""Sample usage records in the Schema Registry formats, for the demo, tests and benchmark.

``UsageEncoder`` turns a canonical usage record (the JSON shape of ``samples``) into a
Confluent wire-format value of one format, with confluent-kafka's own serializers, so the
schema is registered the way producers register it (subject ``<topic>-value``). The
registry formats hold the quantity in a nested record, ``usage.quantity``, and the time as
the format's own timestamp type (Avro ``timestamp-millis``, ``google.protobuf.Timestamp``,
a JSON Schema ``date-time`` string): ``REGISTRY_MAPPING`` is the mapping that reads them.
"""

from __future__ import annotations

import datetime
from typing import Any

import orjson

#: The mapping keys that read the registry formats' records (the rest: the defaults).
REGISTRY_MAPPING: dict[str, str] = {"value": "usage.quantity"}

AVRO_SCHEMA = orjson.dumps(
    {
        "type": "record",
        "name": "UsageRecord",
        "namespace": "meterstream.samples",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "customer", "type": "string"},
            {"name": "event_name", "type": "string"},
            {
                "name": "usage",
                "type": {
                    "type": "record",
                    "name": "Usage",
                    "fields": [{"name": "quantity", "type": "long"}],
                },
            },
            {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "region", "type": ["null", "string"], "default": None},
        ],
    }
).decode()

JSON_SCHEMA = orjson.dumps(
    {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "UsageRecord",
        "type": "object",
        "required": ["id", "customer", "event_name", "usage", "timestamp"],
        "properties": {
            "id": {"type": "string"},
            "customer": {"type": "string"},
            "event_name": {"type": "string"},
            "usage": {
                "type": "object",
                "required": ["quantity"],
                "properties": {"quantity": {"type": "integer"}},
            },
            "timestamp": {"type": "string", "format": "date-time"},
            "region": {"type": "string"},
        },
    }
).decode()

_PROTO_FILE = "meterstream/samples/usage_record.proto"


def _protobuf_class() -> Any:
    """The UsageRecord message class, built from a descriptor (no protoc needed)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2
    from google.protobuf.message_factory import GetMessageClass

    pool = descriptor_pool.Default()
    try:
        return GetMessageClass(pool.FindMessageTypeByName("meterstream.samples.UsageRecord"))
    except KeyError:
        pass
    _ = timestamp_pb2  # the import puts google/protobuf/timestamp.proto into the pool
    kinds = descriptor_pb2.FieldDescriptorProto
    optional = kinds.LABEL_OPTIONAL
    file_proto = descriptor_pb2.FileDescriptorProto(
        name=_PROTO_FILE,
        package="meterstream.samples",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    record = file_proto.message_type.add(name="UsageRecord")
    usage = record.nested_type.add(name="Usage")
    usage.field.add(name="quantity", number=1, type=kinds.TYPE_INT64, label=optional)
    for number, name in enumerate(("id", "customer", "event_name"), start=1):
        record.field.add(name=name, number=number, type=kinds.TYPE_STRING, label=optional)
    record.field.add(
        name="usage",
        number=4,
        type=kinds.TYPE_MESSAGE,
        label=optional,
        type_name=".meterstream.samples.UsageRecord.Usage",
    )
    record.field.add(
        name="timestamp",
        number=5,
        type=kinds.TYPE_MESSAGE,
        label=optional,
        type_name=".google.protobuf.Timestamp",
    )
    record.field.add(name="region", number=6, type=kinds.TYPE_STRING, label=optional)
    pool.Add(file_proto)
    return GetMessageClass(pool.FindMessageTypeByName("meterstream.samples.UsageRecord"))


class UsageEncoder:
    """Canonical usage records to wire-format values of ``record_format`` for ``topic``."""

    def __init__(self, url: str, record_format: str, topic: str) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.serialization import MessageField, SerializationContext

        self.format = record_format
        self._client = SchemaRegistryClient({"url": url})
        self._context = SerializationContext(topic, MessageField.VALUE)
        conf = {"auto.register.schemas": True}
        self._serialize: Any
        if record_format == "avro":
            from confluent_kafka.schema_registry.avro import AvroSerializer

            self._serialize = AvroSerializer(self._client, AVRO_SCHEMA, conf=conf)
        elif record_format == "json_schema":
            from confluent_kafka.schema_registry.json_schema import JSONSerializer

            self._serialize = JSONSerializer(JSON_SCHEMA, self._client, conf=conf)
        elif record_format == "protobuf":
            from confluent_kafka.schema_registry.protobuf import ProtobufSerializer

            self._message = _protobuf_class()
            self._serialize = ProtobufSerializer(self._message, self._client, conf=conf)
        else:
            raise ValueError(f"not a Schema Registry format: {record_format}")

    def encode(self, record: dict[str, Any]) -> bytes:
        """One canonical record (id, customer, event_name, value, timestamp, region)."""
        moment = datetime.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
        fields: dict[str, Any] = {
            "id": record["id"],
            "customer": record["customer"],
            "event_name": record["event_name"],
            "usage": {"quantity": record["value"]},
        }
        if "region" in record:
            fields["region"] = record["region"]
        if self.format == "avro":
            fields["timestamp"] = moment
        elif self.format == "json_schema":
            fields["timestamp"] = record["timestamp"]
        else:
            message = self._message(**{k: v for k, v in fields.items() if k != "usage"})
            message.usage.quantity = record["value"]
            message.timestamp.FromDatetime(moment)
            fields = message
        value: bytes = self._serialize(fields, self._context)
        return value

    def close(self) -> None:
        """Close the registry client's HTTP connections."""
        self._client.close()

    def __enter__(self) -> UsageEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def encode_json(self, value: bytes) -> bytes:
        """A canonical record given as JSON bytes (what ``samples.generate`` yields)."""
        return self.encode(orjson.loads(value))
