"""Billing meters as the emulator knows them: declared on the command line, in a file, or
created on first use.

A meter says which ``event_name`` it counts, how (``sum``, ``count``, ``last``) and which
payload keys carry the customer and the value (Stripe's defaults: ``stripe_customer_id``
and ``value``). Ids are derived from the event name so they stay the same across runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

Formula = Literal["sum", "count", "last"]
FORMULAS: tuple[Formula, ...] = ("sum", "count", "last")
TimeWindow = Literal["hour", "day"]
#: ``event_time_window`` -> its length: Stripe keeps one event per customer per window.
WINDOW_SECONDS: dict[str, int] = {"hour": 3_600, "day": 86_400}
#: Stripe's default payload keys for a meter's customer and value.
DEFAULT_CUSTOMER_KEY = "stripe_customer_id"
DEFAULT_VALUE_KEY = "value"
#: Stripe limits ``event_name`` (and identifiers) to 100 characters.
MAX_EVENT_NAME_LENGTH = 100


class MeterSpecError(ValueError):
    """A meter declaration (flag, file or API call) is malformed."""


@dataclass(frozen=True)
class Meter:
    """One billing meter; ``to_stripe()`` renders Stripe's ``billing.meter`` object."""

    event_name: str
    formula: Formula = "sum"
    customer_key: str = DEFAULT_CUSTOMER_KEY
    value_key: str = DEFAULT_VALUE_KEY
    display_name: str = ""
    active: bool = True
    #: ``hour``/``day``: events are pre-aggregated by the sender, and Stripe keeps only the
    #: most recent one per customer per window. None: every event counts.
    event_time_window: TimeWindow | None = None
    created: int = 0
    updated: int = 0
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not isinstance(self.event_name, str) or not self.event_name:
            raise MeterSpecError("a meter needs a non-empty event_name")
        if len(self.event_name) > MAX_EVENT_NAME_LENGTH:
            raise MeterSpecError(
                f"event_name over {MAX_EVENT_NAME_LENGTH} characters: {self.event_name[:40]}..."
            )
        if self.formula not in FORMULAS:
            raise MeterSpecError(
                f"meter {self.event_name!r}: formula must be one of {', '.join(FORMULAS)}, "
                f"not {self.formula!r}"
            )
        if self.event_time_window is not None and self.event_time_window not in WINDOW_SECONDS:
            raise MeterSpecError(
                f"meter {self.event_name!r}: event_time_window must be hour or day, "
                f"not {self.event_time_window!r}"
            )
        for what, key in (("customer key", self.customer_key), ("value key", self.value_key)):
            if not isinstance(key, str) or not key:
                raise MeterSpecError(f"meter {self.event_name!r}: empty {what}")
        if not self.id:
            object.__setattr__(self, "id", meter_id(self.event_name))
        if not self.display_name:
            object.__setattr__(self, "display_name", self.event_name)

    def stamped(self, now: int) -> Meter:
        """This meter with its creation time set (if not yet) to ``now``."""
        if self.created:
            return self
        return replace(self, created=now, updated=now)

    def to_stripe(self) -> dict[str, Any]:
        """Stripe's ``billing.meter`` object (v1: Unix-second timestamps)."""
        return {
            "id": self.id,
            "object": "billing.meter",
            "created": self.created,
            "customer_mapping": {"event_payload_key": self.customer_key, "type": "by_id"},
            "default_aggregation": {"formula": self.formula},
            "display_name": self.display_name,
            "event_name": self.event_name,
            "event_time_window": self.event_time_window,
            "livemode": False,
            "status": "active" if self.active else "inactive",
            "status_transitions": {"deactivated_at": None if self.active else self.updated},
            "updated": self.updated,
            "value_settings": {"event_payload_key": self.value_key},
        }


def meter_id(event_name: str, account: str | None = None) -> str:
    """A stable Stripe-shaped id for the meter of ``event_name`` (in a connected
    ``account``: another id, as each account's meters are its own objects)."""
    key = f"{account}/{event_name}" if account else event_name
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return f"mtr_test_{digest}"


def parse_meter_spec(spec: str) -> Meter:
    """``event_name[:formula[:customer_key[:value_key[:event_time_window]]]]``; empty parts
    take the defaults."""
    parts = spec.split(":")
    if len(parts) > 5:
        raise MeterSpecError(
            f"--meter {spec!r}: expected event_name[:formula[:customer_key[:value_key[:hour|day]]]]"
        )
    parts += [""] * (5 - len(parts))
    name, formula, customer_key, value_key, window = (part.strip() for part in parts)
    return Meter(
        event_name=name,
        formula=cast(Formula, formula or "sum"),
        customer_key=customer_key or DEFAULT_CUSTOMER_KEY,
        value_key=value_key or DEFAULT_VALUE_KEY,
        event_time_window=cast(TimeWindow, window) if window else None,
    )


def meter_from_mapping(item: Mapping[str, Any]) -> Meter:
    """A meter from a file entry: flat keys, or Stripe's own nested shape."""
    if not isinstance(item, Mapping):
        raise MeterSpecError(f"a meter entry must be a mapping, not {type(item).__name__}")
    known = {
        "event_name",
        "formula",
        "customer_key",
        "value_key",
        "display_name",
        "status",
        "default_aggregation",
        "customer_mapping",
        "value_settings",
        "event_time_window",
    }
    unknown = sorted(set(item) - known)
    if unknown:
        raise MeterSpecError(f"meter entry has unknown keys: {', '.join(map(str, unknown))}")

    def nested(outer: str, inner: str) -> Any:
        value = item.get(outer)
        return value.get(inner) if isinstance(value, Mapping) else None

    formula: Formula = item.get("formula") or nested("default_aggregation", "formula") or "sum"
    status = item.get("status", "active")
    if status not in ("active", "inactive"):
        raise MeterSpecError(f"meter status must be active or inactive, not {status!r}")
    return Meter(
        event_name=item.get("event_name", ""),
        formula=formula,
        customer_key=item.get("customer_key")
        or nested("customer_mapping", "event_payload_key")
        or DEFAULT_CUSTOMER_KEY,
        value_key=item.get("value_key")
        or nested("value_settings", "event_payload_key")
        or DEFAULT_VALUE_KEY,
        display_name=item.get("display_name") or "",
        active=status == "active",
        event_time_window=item.get("event_time_window") or None,
    )


def load_meters_file(path: str | Path) -> list[Meter]:
    """Meters from a YAML or JSON file: a list of entries, or ``{"meters": [...]}``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MeterSpecError(f"cannot read meters file {path}: {exc.strerror}") from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ValueError as exc:  # json.JSONDecodeError and yaml.YAMLError's subclasses
        raise MeterSpecError(f"meters file {path} is not valid: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError is not a ValueError
        raise MeterSpecError(f"meters file {path} is not valid YAML: {exc}") from exc
    if isinstance(data, Mapping):
        data = data.get("meters")
    if not isinstance(data, list):
        raise MeterSpecError(f"meters file {path}: expected a list of meters or {{meters: [...]}}")
    return [meter_from_mapping(item) for item in data]


def check_unique(meters: Iterable[Meter]) -> list[Meter]:
    """The meters as a list, refusing two meters for one event name (as Stripe does)."""
    seen: set[str] = set()
    result = []
    for meter in meters:
        if meter.event_name in seen:
            raise MeterSpecError(f"two meters declared for event_name {meter.event_name!r}")
        seen.add(meter.event_name)
        result.append(meter)
    return result
