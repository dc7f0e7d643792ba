"""The Schema Registry configuration and the pure parts of decoding: the wire-format header
and the normalisation of decoded values (the registry itself: tests/integration)."""

from __future__ import annotations

import datetime
import decimal
import http.server
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from connector.config import SchemaRegistryConfig, load_config
from connector.errors import ConfigError, RecordError, RegistryUnavailableError
from connector.registry_decode import RegistryDecoder, _normalised, _plain
from meterstream_local.registry.encode import _protobuf_class

URL = "http://127.0.0.1:1/apis/ccompat/v7"  # never contacted by these tests


def test_a_registry_format_without_a_url_names_the_key_and_the_fix() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={}, overrides={"records": {"format": "protobuf"}})
    [(key, message)] = caught.value.problems
    assert key == "schema_registry.url"
    assert "records.format is protobuf" in message
    assert "set schema_registry.url" in message


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={}, overrides={"records": {"format": "xml"}})
    assert caught.value.problems[0][0] == "records.format"


def test_credentials_come_from_the_named_environment_variable() -> None:
    overrides = {
        "records": {"format": "avro"},
        "schema_registry": {"url": URL, "basic_auth_user_info_env": "SR_AUTH"},
    }
    config = load_config(environ={"SR_AUTH": "reader:s3cret"}, overrides=overrides)
    conf = config.schema_registry.client_conf()
    assert conf["basic.auth.user.info"] == "reader:s3cret"
    assert conf["url"] == URL
    assert "s3cret" not in str(config.redacted_dict())
    with pytest.raises(ConfigError) as caught:
        load_config(environ={}, overrides=overrides)
    assert "SR_AUTH" in str(caught.value)
    with pytest.raises(ConfigError, match="user:password"):
        load_config(environ={"SR_AUTH": "no-colon"}, overrides=overrides)


def test_tls_files_must_exist() -> None:
    with pytest.raises(ConfigError, match="ssl_ca_location"):
        load_config(
            environ={},
            overrides={"schema_registry": {"url": URL, "ssl_ca_location": "/nonexistent/ca.pem"}},
        )


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "no value"),
        (b"", "not in the Confluent wire format"),
        (b'{"id": 1}', "starting with 0x7b"),
        (b"\x00\x00\x01", "3 bytes"),
    ],
)
def test_values_not_in_the_wire_format_are_invalid_encoding(value: bytes | None, says: str) -> None:
    decoder = RegistryDecoder(SchemaRegistryConfig(url=URL), "avro")
    assert decoder.cached(value), "a bad header needs no registry to refuse"
    with pytest.raises(RecordError) as caught:
        decoder.decode(value)
    assert caught.value.reason == "invalid_encoding"
    assert says in caught.value.message


def test_the_header_names_the_schema_id() -> None:
    decoder = RegistryDecoder(SchemaRegistryConfig(url=URL), "avro")
    assert decoder.schema_id(b"\x00\x00\x00\x01\x02payload") == 258
    assert not decoder.cached(b"\x00\x00\x00\x01\x02payload"), "not fetched yet"


def test_avro_logical_types_become_what_the_mapper_reads() -> None:
    moment = datetime.datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC)
    record = {
        "timestamp": moment,
        "naive": datetime.datetime(2026, 6, 1, 12, 0, 0),
        "usage": {"quantity": decimal.Decimal("12"), "share": decimal.Decimal("2.5")},
        "day": datetime.date(2026, 6, 1),
        "ref": uuid.UUID(int=1),
        "tags": [{"at": moment}],
    }
    assert _normalised(record) == {
        "timestamp": "2026-06-01T12:00:00.123Z",
        "naive": "2026-06-01T12:00:00.000Z",
        "usage": {"quantity": 12, "share": "2.5"},
        "day": "2026-06-01",
        "ref": "00000000-0000-0000-0000-000000000001",
        "tags": [{"at": "2026-06-01T12:00:00.123Z"}],
    }


def test_protobuf_messages_become_dicts_with_zero_values_and_rfc3339_times() -> None:
    message = _protobuf_class()(id="r1", customer="cus_1", event_name="api", region="")
    message.usage.quantity = 0
    message.timestamp.FromDatetime(datetime.datetime(2026, 6, 1, 12, 0, 0, 5000))
    assert _plain(message) == {
        "id": "r1",
        "customer": "cus_1",
        "event_name": "api",
        "usage": {"quantity": 0},
        "timestamp": "2026-06-01T12:00:00.005Z",
        "region": "",
    }
    unset = _protobuf_class()(id="r2")
    assert "usage" not in _plain(unset), "an unset message field is absent, as in JSON"
    assert "timestamp" not in _plain(unset)


class _Registry(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in that answers every request with the status its path asks for."""

    #: Requests answered, over every server of the test session.
    answered = 0

    def do_GET(self) -> None:
        type(self).answered += 1
        status = int(self.path.split("/")[1])
        body = json.dumps({"error_code": status * 100 + 3, "message": "as asked"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        return


@pytest.fixture
def answering() -> Iterator[Callable[[int], str]]:
    """``url(status)``: a registry URL on loopback whose every answer has that status."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield lambda status: f"http://127.0.0.1:{server.server_address[1]}/{status}"
    server.shutdown()
    server.server_close()


VALUE = b"\x00\x00\x00\x00\x07\x02"


@pytest.mark.parametrize("status", [500, 503, 401])
def test_a_registry_that_fails_is_an_outage_not_a_bad_record(
    answering: Callable[[int], str], status: int
) -> None:
    decoder = RegistryDecoder(SchemaRegistryConfig(url=answering(status)), "avro")
    with pytest.raises(RegistryUnavailableError, match=f"HTTP {status}"):
        decoder.decode(VALUE)
    assert not decoder.cached(VALUE), "tried again next time"


def test_a_registry_that_is_not_there_is_an_outage() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    decoder = RegistryDecoder(SchemaRegistryConfig(url=url), "protobuf")
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        decoder.decode(VALUE)


def test_an_unknown_schema_id_is_the_record_s_fault(answering: Callable[[int], str]) -> None:
    decoder = RegistryDecoder(SchemaRegistryConfig(url=answering(404)), "json_schema")
    with pytest.raises(RecordError) as caught:
        decoder.decode(VALUE)
    assert caught.value.reason == "invalid_encoding"
    assert "schema id 7, which the Schema Registry does not have" in caught.value.message


def test_protobuf_repeated_map_and_enum_fields_read_as_their_json() -> None:
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.message_factory import GetMessageClass

    kinds = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="unit/shapes.proto", package="unit", syntax="proto3"
    )
    plan = file_proto.enum_type.add(name="Plan")
    plan.value.add(name="FREE", number=0)
    plan.value.add(name="PRO", number=1)
    shape = file_proto.message_type.add(name="Shape")
    entry = shape.nested_type.add(name="LimitsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=kinds.TYPE_STRING, label=kinds.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=kinds.TYPE_INT64, label=kinds.LABEL_OPTIONAL)
    repeated = kinds.LABEL_REPEATED
    shape.field.add(name="tags", number=1, type=kinds.TYPE_STRING, label=repeated)
    shape.field.add(
        name="limits",
        number=2,
        type=kinds.TYPE_MESSAGE,
        label=repeated,
        type_name=".unit.Shape.LimitsEntry",
    )
    shape.field.add(
        name="plan",
        number=3,
        type=kinds.TYPE_ENUM,
        label=kinds.LABEL_OPTIONAL,
        type_name=".unit.Plan",
    )
    shape.field.add(
        name="plans", number=4, type=kinds.TYPE_ENUM, label=repeated, type_name=".unit.Plan"
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    message = GetMessageClass(pool.FindMessageTypeByName("unit.Shape"))(
        tags=["a", "b"], plan=1, plans=[0, 1]
    )
    message.limits["calls"] = 5
    assert _plain(message) == {
        "tags": ["a", "b"],
        "limits": {"calls": 5},
        "plan": "PRO",
        "plans": ["FREE", "PRO"],
    }


def test_an_unknown_schema_id_is_asked_for_once_a_minute(answering: Callable[[int], str]) -> None:
    decoder = RegistryDecoder(SchemaRegistryConfig(url=answering(404)), "avro")
    now = [1000.0]
    decoder._clock = lambda: now[0]
    before = _Registry.answered
    for _ in range(3):
        with pytest.raises(RecordError, match="does not have"):
            decoder.decode(VALUE)
    assert _Registry.answered == before + 1, "the answer is remembered"
    assert decoder.cached(VALUE), "so the next value needs no request"
    now[0] += 61
    assert not decoder.cached(VALUE)
    with pytest.raises(RecordError):
        decoder.decode(VALUE)
    assert _Registry.answered == before + 2, "asked again after a minute"
