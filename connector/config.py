"""The effective configuration: a YAML file, overridden by the environment, validated once.

Precedence, highest first: ``METERSTREAM_<SECTION>__<KEY>`` environment variables (and
``STRIPE_API_KEY`` for ``stripe.api_key``), then the YAML file, then the defaults below,
a broker on 127.0.0.1:9092 and Stripe itself.
Stripe's URLs are the defaults; the demo and tests point both at the local emulator.
Every model is frozen: configuration is read once at start-up and never mutated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from connector.errors import ConfigError

#: Stripe accepts at most 100 events per meter_event_stream request.
STRIPE_MAX_EVENTS_PER_REQUEST = 100
#: A meter event session token lives 15 minutes; renewing later than that is pointless.
STRIPE_SESSION_LIFETIME_SECONDS = 900.0

LibrdkafkaValue = str | int | float | bool

#: librdkafka keys whose values are secrets: redacted by ``redacted_dict``.
_SECRET_KEY_PARTS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key.pem", "token")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: librdkafka properties that say how to connect, not how to consume: every client of the
#: cluster needs the same ones.
CONNECTION_PROPERTY_PREFIXES = (
    "security.protocol",
    "sasl.",
    "ssl.",
    "enable.ssl.",
    "ssl_engine",
    "client.dns.lookup",
    "broker.address.family",
    "socket.",
    "client.rack",
)


class KafkaConfig(_Section):
    """Where usage records come from and where dead letters go."""

    bootstrap_servers: str = Field("127.0.0.1:9092", min_length=1)
    group_id: str = Field("meterstream", min_length=1)
    topics: list[str] = Field(default_factory=lambda: ["usage"], min_length=1)
    dead_letter_topic: str = Field("usage.dlq", min_length=1)
    #: Where a new consumer group starts. Billing never skips usage, so ``earliest``.
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    #: Extra librdkafka consumer properties (security.protocol, sasl.*, ssl.*, ...).
    consumer: dict[str, LibrdkafkaValue] = Field(default_factory=dict)
    #: Extra librdkafka properties for the dead-letter producer.
    producer: dict[str, LibrdkafkaValue] = Field(default_factory=dict)
    #: librdkafka properties whose values come from environment variables (secrets
    #: mounted from Kubernetes Secrets), for both the consumer and the DLQ producer:
    #: e.g. {"sasl.password": "KAFKA_SASL_PASSWORD"}.
    secret_env: dict[str, str] = Field(default_factory=dict)
    #: Where Stripe's meter error reports are kept (one JSON record each, keyed by the
    #: Stripe event id); also where polling resumes after a restart. null: not kept.
    error_reports_topic: str | None = Field(None, min_length=1)
    #: Records taken from librdkafka per poll; bigger amortises Python overhead.
    poll_max_records: int = Field(1000, ge=1, le=100_000)

    @model_validator(mode="after")
    def _dlq_not_a_source(self) -> KafkaConfig:
        if self.dead_letter_topic in self.topics:
            raise ValueError(
                "kafka.dead_letter_topic must differ from every topic in kafka.topics "
                "(dead letters would be consumed and billed)"
            )
        if self.error_reports_topic in (*self.topics, self.dead_letter_topic):
            raise ValueError(
                "kafka.error_reports_topic must differ from kafka.topics and "
                "kafka.dead_letter_topic (reports are not usage)"
            )
        return self

    _secrets: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _read_secret_env(self) -> KafkaConfig:
        # Read once, at load time, so the values travel with the config (worker processes).
        missing = [name for name in self.secret_env.values() if not os.environ.get(name)]
        if missing:
            raise ValueError(
                "kafka.secret_env names environment variables that are not set: "
                + ", ".join(sorted(missing))
            )
        self._secrets = {key: SecretStr(os.environ[name]) for key, name in self.secret_env.items()}
        return self

    def common_properties(self) -> dict[str, LibrdkafkaValue]:
        """Connection properties shared by every client (consumer, DLQ producer, admin).

        How to reach the cluster (security, SASL, TLS, DNS, sockets) is said once, in
        ``kafka.consumer`` (or ``secret_env``): a DLQ producer that cannot authenticate
        would hold every commit back. ``kafka.producer`` still overrides for the producer.
        """
        props: dict[str, LibrdkafkaValue] = {"bootstrap.servers": self.bootstrap_servers}
        for key, setting in self.consumer.items():
            if key.startswith(CONNECTION_PROPERTY_PREFIXES):
                props[key] = setting
        for key, secret in self._secrets.items():
            props[key] = secret.get_secret_value()
        return props


class StripeConfig(_Section):
    """How to reach Stripe (or the local emulator)."""

    #: Secret or restricted key. Prefer the STRIPE_API_KEY environment variable.
    api_key: SecretStr | None = None
    api_base: str = "https://api.stripe.com"
    #: The high-throughput host; a different host from api_base at Stripe.
    meter_events_base: str = "https://meter-events.stripe.com"
    stripe_version: str = Field("2026-10-28.endive", min_length=1)
    #: Per-request timeout; a timeout is an outage (retried), never bad data.
    request_timeout_seconds: float = Field(10.0, gt=0, le=300)
    #: Renew the session this long before ``expires_at``.
    session_renew_margin_seconds: float = Field(60.0, ge=0, lt=STRIPE_SESSION_LIFETIME_SECONDS)
    #: How often one member of the group reads Stripe's meter error reports (0: never).
    error_reports_poll_seconds: float = Field(30.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _bases_are_urls(self) -> StripeConfig:
        for name in ("api_base", "meter_events_base"):
            value = getattr(self, name)
            if not value.startswith(("http://", "https://")):
                raise ValueError(f"stripe.{name} must start with http:// or https://")
        return self


class FanOutMeter(_Section):
    """One meter fed from each record: fan-out turns a record into one event per entry."""

    #: The meter's event name (a constant).
    event_name: str = Field(min_length=1, max_length=100)
    #: Dotted path to this meter's value in the record.
    value: str = Field(min_length=1)
    customer_payload_key: str | None = None
    value_payload_key: str | None = None
    #: When the value path is absent: skip this meter for the record instead of dead-lettering.
    optional: bool = False


class MappingConfig(_Section):
    """Where each meter event field comes from in a record (dotted paths)."""

    event_name: str | None = "event_name"
    #: A fixed event name for every record (instead of reading ``event_name``).
    constant_event_name: str | None = Field(None, min_length=1, max_length=100)
    customer: str = Field("customer", min_length=1)
    value: str = Field("value", min_length=1)
    #: Absent or null in a record: the Kafka record timestamp is used.
    timestamp: str | None = "timestamp"
    #: Absent: derived from (topic, partition, offset) so a resend reuses it (DESIGN 3.2).
    identifier: str | None = "id"
    #: The meter's ``customer_mapping.event_payload_key``.
    customer_payload_key: str = Field("stripe_customer_id", min_length=1)
    #: The meter's ``value_settings.event_payload_key``.
    value_payload_key: str = Field("value", min_length=1)
    #: Dotted paths copied into the payload as strings (meter dimensions). null: every extra
    #: top-level string field of a canonical usage record.
    dimensions: list[str] | None = None
    #: Negative values are refused unless a team sends corrections.
    allow_negative_values: bool = False
    #: One event per entry instead of one per record (e.g. input and output tokens).
    fan_out: list[FanOutMeter] = Field(default_factory=list)
    #: Connected accounts: the path of each record's ``acct_...`` id; its events go to that
    #: account's meters (sessions and meter lists with ``Stripe-Context``). null: the platform.
    stripe_account: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _has_event_name(self) -> MappingConfig:
        if not self.fan_out and not self.event_name and not self.constant_event_name:
            raise ValueError(
                "set mapping.event_name (a path), mapping.constant_event_name, or mapping.fan_out"
            )
        return self


#: How record values are encoded: plain JSON, or the Confluent wire format (magic byte and
#: schema id) with a schema from ``schema_registry`` (docs/schema-registry.md).
RecordFormat = Literal["json", "avro", "protobuf", "json_schema"]


class RecordsConfig(_Section):
    """Limits on incoming records, and their encoding."""

    #: Larger records are dead-lettered (reason record_too_large) without being parsed.
    max_bytes: int = Field(1_048_576, ge=64, le=64 * 1_048_576)
    #: json, or a Schema Registry format (avro, protobuf, json_schema: needs schema_registry.url).
    format: RecordFormat = "json"


class SchemaRegistryConfig(_Section):
    """The Schema Registry that holds the schemas of avro/protobuf/json_schema records."""

    #: The Confluent-compatible API, e.g. http://registry:8081 (Apicurio: .../apis/ccompat/v7).
    url: str | None = Field(None, min_length=1)
    #: An environment variable holding "user:password" for HTTP basic auth (null: none).
    basic_auth_user_info_env: str | None = Field(None, min_length=1)
    #: TLS, as confluent-kafka's SchemaRegistryClient takes it (ssl.ca.location, ...):
    #: a CA bundle file or directory to trust instead of the system's (certifi's),
    ssl_ca_location: str | None = Field(None, min_length=1)
    #: and a client certificate and key (PEM files) for mutual TLS,
    ssl_certificate_location: str | None = Field(None, min_length=1)
    ssl_key_location: str | None = Field(None, min_length=1)
    #: with the key's password in this environment variable (null: the key is not encrypted).
    ssl_key_password_env: str | None = Field(None, min_length=1)
    #: Per request; a timeout is an outage (records wait), never a bad record.
    request_timeout_seconds: float = Field(10.0, gt=0, le=300)

    _secrets: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> SchemaRegistryConfig:
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(
                "schema_registry.url must start with http:// or https:// "
                "(the registry's Confluent-compatible API)"
            )
        for key in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
            path = getattr(self, key)
            if path is not None and not os.path.exists(path):
                raise ValueError(f"schema_registry.{key}: no such file or directory: {path}")
        if self.ssl_key_location is not None and self.ssl_certificate_location is None:
            raise ValueError(
                "schema_registry.ssl_key_location needs schema_registry.ssl_certificate_location "
                "(the client certificate that goes with the key)"
            )
        # Read once, at load time, so the values travel with the config (worker processes).
        for key in ("basic_auth_user_info_env", "ssl_key_password_env"):
            name = getattr(self, key)
            if name is None:
                continue
            value = os.environ.get(name)
            if not value:
                raise ValueError(
                    f"schema_registry.{key} names the environment variable {name}, which is not set"
                )
            if key == "basic_auth_user_info_env" and ":" not in value:
                raise ValueError(
                    f"schema_registry.{key}: the environment variable {name} must hold "
                    '"user:password"'
                )
            self._secrets[key] = SecretStr(value)
        return self

    def client_conf(self) -> dict[str, Any]:
        """The configuration of confluent-kafka's SchemaRegistryClient (secrets included)."""
        conf: dict[str, Any] = {
            "url": self.url,
            "timeout": self.request_timeout_seconds,
            # meterstream retries an outage itself, with backoff and without blocking.
            "max.retries": 0,
        }
        optional = {
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
        }
        conf.update({key: value for key, value in optional.items() if value is not None})
        if "basic_auth_user_info_env" in self._secrets:
            conf["basic.auth.user.info"] = self._secrets[
                "basic_auth_user_info_env"
            ].get_secret_value()
        if "ssl_key_password_env" in self._secrets:
            conf["ssl.key.password"] = self._secrets["ssl_key_password_env"].get_secret_value()
        return conf


class BatchingConfig(_Section):
    """How events are grouped into requests and how much work may be outstanding."""

    max_events: int = Field(STRIPE_MAX_EVENTS_PER_REQUEST, ge=1, le=STRIPE_MAX_EVENTS_PER_REQUEST)
    #: How long a partly filled batch waits for more events.
    linger_ms: int = Field(50, ge=0, le=60_000)
    #: Concurrent requests per process: at ~50 ms per request, 64 carry ~128k events/s.
    max_in_flight: int = Field(64, ge=1, le=1024)
    #: Find the in-flight limit from Stripe's answers (AIMD, up to max_in_flight); false:
    #: always max_in_flight (docs/concurrency.md).
    adaptive_concurrency: bool = True
    #: Records consumed but not yet resolved; at this bound fetching pauses (DESIGN 3.5).
    max_buffered_records: int = Field(20_000, ge=1, le=10_000_000)


class DeliveryConfig(_Section):
    """Retry policy for outages (429, 5xx, timeouts, connection errors)."""

    backoff_initial_seconds: float = Field(0.2, gt=0, le=60)
    backoff_max_seconds: float = Field(30.0, gt=0, le=3600)
    #: After failing this long without a success, the process reports not-ready.
    not_ready_after_seconds: float = Field(30.0, gt=0, le=3600)
    #: Before each attempt, events this close to leaving Stripe's 35-day window (or past
    #: it) are dead-lettered as expired: one attempt plus clock skew must fit in it.
    expiry_margin_seconds: float = Field(60.0, ge=0, le=86_400)


class RateLimitConfig(_Section):
    """An account-wide budget, shared evenly by every process of the deployment."""

    account_requests_per_second: float | None = Field(None, gt=0)
    account_events_per_second: float | None = Field(None, gt=0)
    #: How many pods share the budget; each process takes budget / (replicas * workers).
    replicas: int = Field(1, ge=1)


class CommitConfig(_Section):
    """How often resolved offsets are committed (Stripe dedupes identifiers for 24 h only)."""

    interval_ms: int = Field(1000, ge=10, le=60_000)


class ShutdownConfig(_Section):
    """The hand-over budget on SIGTERM or partition revocation (DESIGN 3.6)."""

    drain_timeout_seconds: float = Field(20.0, gt=0, le=600)


class MetricsConfig(_Section):
    """The HTTP port for /metrics, /livez and /readyz."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(9464, ge=0, le=65535)
    #: /livez fails when the loop's last heartbeat is older than this.
    liveness_max_age_seconds: float = Field(60.0, gt=0)


class LoggingConfig(_Section):
    """Log level and format."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    #: At most one line per distinct problem per this many seconds, then a count of the
    #: repeats suppressed (a down broker is reported once, not 20 times a second). 0: off.
    repeat_seconds: float = Field(30.0, ge=0, le=3600)


class MetersConfig(_Section):
    """Checks against the account's billing meters: Stripe drops what no meter takes, silently."""

    #: Refuse at start (and dead-letter per event) what no active meter would take as
    #: mapped; false trusts the mapping and skips every check (and the meters listing).
    preflight: bool = True
    #: How old the meters list may get; an unknown event name refreshes it early, at most
    #: once per this many seconds.
    refresh_seconds: float = Field(60.0, ge=1, le=86_400)
    #: Meters with an ``event_time_window`` keep only the latest event per customer per
    #: window; their events are dead-lettered (``windowed_meter``) unless this says that
    #: the records already carry running totals (then they go one event per record).
    allow_windowed: bool = False


class AggregationConfig(_Section):
    """Exact pre-aggregation: one event per (customer, meter, dimensions, bucket) per block."""

    #: Off: one event per record. On: sum and last meters travel as aggregates
    #: (docs/aggregation.md).
    enabled: bool = False
    #: One customer's usage of one meter within one bucket becomes one event.
    bucket_seconds: int = Field(60, ge=1, le=3600)
    #: A partition's block closes after this many records...
    max_records: int = Field(50_000, ge=1, le=1_000_000)
    #: ...or this long after its first record, whichever comes first.
    max_seconds: float = Field(5.0, gt=0, le=600)

    @field_validator("bucket_seconds")
    @classmethod
    def _bucket_divides_hour(cls, seconds: int) -> int:
        if 3600 % seconds:
            raise ValueError(
                f"{seconds} does not divide 3600 (a bucket must never cross an hour): "
                "use e.g. 60, 300, 600, 900 or 3600"
            )
        return seconds


class MeterstreamConfig(BaseSettings):
    """The whole configuration; see README 'Configuration' for every key."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="METERSTREAM_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
    )

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    stripe: StripeConfig = Field(default_factory=StripeConfig)
    mapping: MappingConfig = Field(default_factory=MappingConfig)
    records: RecordsConfig = Field(default_factory=RecordsConfig)
    schema_registry: SchemaRegistryConfig = Field(default_factory=SchemaRegistryConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    commit: CommitConfig = Field(default_factory=CommitConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    meters: MetersConfig = Field(default_factory=MetersConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init kwargs), as operators expect.
        return (env_settings, init_settings)

    def redacted_dict(self) -> dict[str, Any]:
        """The effective configuration with every secret replaced by ``**********``."""
        data = self.model_dump(mode="json")
        if self.stripe.api_key is not None:
            data["stripe"]["api_key"] = "**********"
        for section in ("consumer", "producer"):
            props = data["kafka"][section]
            for key in props:
                if any(part in key.lower() for part in _SECRET_KEY_PARTS):
                    props[key] = "**********"
        return data

    def require_api_key(self) -> SecretStr:
        """The API key, or a ConfigError that says where to put it."""
        if self.stripe.api_key is None or not self.stripe.api_key.get_secret_value():
            raise ConfigError(
                [
                    (
                        "stripe.api_key",
                        "missing: set the STRIPE_API_KEY environment variable "
                        "(or stripe.api_key in the config file)",
                    )
                ]
            )
        return self.stripe.api_key


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([("--config", f"file not found: {path}")]) from None
    except OSError as exc:
        raise ConfigError([("--config", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([("--config", f"{path} is not valid YAML{where}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([("--config", f"{path} must hold a mapping of sections at the top")])
    return data


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key: remove it or check its spelling against the README"
        problems.append((key, message))
    return problems


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> MeterstreamConfig:
    """Read, merge and validate the configuration; raise ConfigError naming each bad key.

    ``path`` falls back to ``METERSTREAM_CONFIG``; with neither, only defaults and the
    environment apply. ``overrides`` (a nested dict) win over the file, for tests and CLIs.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get("METERSTREAM_CONFIG"):
        path = env["METERSTREAM_CONFIG"]
    data: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    if overrides:
        data = _deep_merge(data, overrides)
    api_key = env.get("STRIPE_API_KEY")
    if api_key and "METERSTREAM_STRIPE__API_KEY" not in env:
        data = _deep_merge(data, {"stripe": {"api_key": api_key}})
    saved = None
    if environ is not None:
        # pydantic-settings reads os.environ; swap in the given mapping for this call.
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
    try:
        config = MeterstreamConfig(**data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)
    problems = semantic_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def semantic_problems(config: MeterstreamConfig) -> list[tuple[str, str]]:
    """What ``run`` would refuse beyond the schema: the mapping's compiled checks and the
    librdkafka properties. ``load_config`` applies them, so ``check-config`` and ``run``
    accept exactly the same files."""
    # Imported here: both modules import this one.
    from connector.kafka import property_problems
    from connector.mapping import Mapper

    problems: list[tuple[str, str]] = []
    try:
        Mapper(config.mapping)
    except ConfigError as exc:
        problems.extend(exc.problems)
    problems.extend(property_problems(config.kafka))
    if config.records.format != "json" and config.schema_registry.url is None:
        problems.append(
            (
                "schema_registry.url",
                f"records.format is {config.records.format}, whose records name a schema in "
                "a Schema Registry: set schema_registry.url to the registry's "
                "Confluent-compatible API (e.g. http://registry:8081; Apicurio: "
                "http://registry:8080/apis/ccompat/v7), or set records.format to json",
            )
        )
    if config.aggregation.enabled and not config.meters.preflight:
        problems.append(
            (
                "aggregation.enabled",
                "needs each meter's formula (sum, last or count) from the meters list: set "
                "meters.preflight to true, or aggregation.enabled to false",
            )
        )
    return problems


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
