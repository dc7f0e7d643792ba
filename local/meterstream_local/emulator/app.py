"""The emulator's HTTP surface: a plain ASGI callable serving both Stripe hosts.

No web framework: the stream endpoint is the benchmark's hot path, and routing it is one
string comparison. Every response carries a ``Request-Id``; v2 endpoints answer v2 error
bodies, v1 endpoints v1 bodies (form-encoded parameters, Unix-second timestamps). The
``/_emulator`` prefix (never used by Stripe) holds inspection and control endpoints,
which faults never touch and which are not counted in the request statistics.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from meterstream_local.emulator.accounts import Accounts, UnknownContextError
from meterstream_local.emulator.clock import rfc3339
from meterstream_local.emulator.faults import Faults, KnobError, Knobs, Refusal
from meterstream_local.emulator.meters import Meter, MeterSpecError, meter_from_mapping
from meterstream_local.emulator.state import EmulatorState
from meterstream_local.emulator.validation import RequestRejected, check_events, parse_timestamp

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Response = tuple[int, bytes, Headers | None]

SESSION_PATH = "/v2/billing/meter_event_session"
STREAM_PATH = "/v2/billing/meter_event_stream"
ADJUSTMENTS_PATH = "/v2/billing/meter_event_adjustments"
METERS_PATH = "/v1/billing/meters"
EVENTS_PATH = "/v2/core/events"
CUSTOMERS_PATH = "/v1/customers"
#: v2 event lists: default and maximum page size, and how many types one query may name.
DEFAULT_EVENTS_LIMIT = 20
MAX_EVENTS_LIMIT = 100
MAX_EVENT_TYPES = 20
CONTROL_PREFIX = "/_emulator/"
#: API key prefixes Stripe issues (secret and restricted keys); anything else gets 401.
API_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_", "rk_")
#: v1 list pages: Stripe's default and maximum ``limit``.
DEFAULT_LIST_LIMIT = 10
MAX_LIST_LIMIT = 100
#: value_grouping_window -> window length in seconds.
GROUPING_WINDOWS = {"hour": 3_600, "day": 86_400}
EXPIRED_TYPE = "temporary_session_expired"
EXPIRED_CODE = "billing_meter_event_session_expired"

_JSON = (b"content-type", b"application/json")
_EMPTY_OBJECT = b"{}"
log = logging.getLogger(__name__)


def v2_error(
    status: int, kind: str, code: str, message: str, param: str | None = None
) -> tuple[int, bytes]:
    """A v2 error body ``{"error": {"type", "code", "message"[, "param"]}}``."""
    error: dict[str, Any] = {"type": kind, "code": code, "message": message}
    if param:
        error["param"] = param
    return status, orjson.dumps({"error": error})


def v1_error(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> tuple[int, bytes]:
    """A v1 error body ``{"error": {"type", "message"[, "code", "param"]}}``."""
    error: dict[str, Any] = {"type": kind, "message": message}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    return status, orjson.dumps({"error": error})


def _refusal_response(refusal: Refusal, v2: bool) -> Response:
    headers: Headers = []
    if refusal.retry_after is not None:
        headers.append((b"retry-after", str(max(0, round(refusal.retry_after))).encode()))
    if refusal.status == 429:
        message = "Too many requests hit the API too quickly (emulator fault injection)."
        kind, code = "rate_limit", "rate_limit"
    elif refusal.status >= 500:
        message = f"An error occurred with our connection to Stripe (emulator {refusal.kind})."
        kind, code = (
            "api_error",
            "internal_error" if refusal.status == 500 else "service_unavailable",
        )
    else:
        message = f"Injected failure (emulator {refusal.kind})."
        kind, code = "invalid_request_error", "injected_failure"
    if v2:
        status, body = v2_error(refusal.status, kind, code, message)
    else:
        status, body = v1_error(refusal.status, message, kind=kind, code=code)
    return status, body, headers


def _api_key(scope: Scope, *, allow_basic: bool = True) -> str | None:
    """The credential from ``Authorization: Bearer`` (or Basic ``key:``), or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            text = value.decode("latin-1").strip()
            kind, _, credential = text.partition(" ")
            kind = kind.lower()
            credential = credential.strip()
            if kind == "bearer":
                return credential or None
            if kind == "basic" and allow_basic:
                try:
                    decoded = base64.b64decode(credential, validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    return None
                return decoded.partition(":")[0] or None
            return None
    return None


def _context(scope: Scope, *, v1: bool) -> str | None:
    """The account a request runs on: ``Stripe-Context`` (v1 also reads ``Stripe-Account``)."""
    fallback = None
    for name, value in scope["headers"]:
        if name == b"stripe-context":
            return value.decode("latin-1").strip() or None
        if v1 and name == b"stripe-account":
            fallback = value.decode("latin-1").strip() or None
    return fallback


def _valid_key(key: str | None) -> bool:
    return key is not None and any(
        key.startswith(prefix) and len(key) > len(prefix) for prefix in API_KEY_PREFIXES
    )


def _livemode(key: str) -> bool:
    return key.startswith(("sk_live_", "rk_live_"))


class EmulatorApp:
    """The ASGI application; ``state`` and ``faults`` are shared with the Python API."""

    def __init__(self, state: EmulatorState, faults: Faults, *, initial_knobs: Knobs) -> None:
        #: The platform account's state; connected accounts' states live in ``accounts``.
        self.state = state
        self.accounts = Accounts(state, state.declared)
        self.faults = faults
        self.initial_knobs = initial_knobs
        self._request_ids = itertools.count(1)
        self._request_prefix = secrets.token_hex(4)

    def now(self) -> float:
        """The emulator's clock: wall time plus ``clock_offset_seconds``."""
        return time.time() + self.faults.knobs.clock_offset_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        request_id = f"req_{self._request_prefix}{next(self._request_ids):010x}".encode()
        path: str = scope["path"]
        try:
            if path.startswith(CONTROL_PREFIX):
                status, payload, headers = self._control(scope, path, body)
            else:
                endpoint = self._endpoint(path)
                status, payload, headers = await self._stripe(scope, endpoint, path, body)
                self.state.record_request(endpoint, status)
        except Exception:  # a bug in the emulator: say so as Stripe would, and log it
            log.exception("emulator error on %s %s", scope.get("method"), path)
            status, payload = v2_error(500, "api_error", "internal_error", "emulator error")
            headers = None
        response_headers = [
            _JSON,
            (b"content-length", str(len(payload)).encode()),
            (b"request-id", request_id),
        ]
        if headers:
            response_headers.extend(headers)
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    def _endpoint(path: str) -> str:
        if path == STREAM_PATH:
            return "meter_event_stream"
        if path == SESSION_PATH:
            return "meter_event_session"
        if path == ADJUSTMENTS_PATH:
            return "meter_event_adjustments"
        if path.startswith(METERS_PATH):
            return "event_summaries" if path.endswith("/event_summaries") else "meters"
        if path == EVENTS_PATH or path.startswith(EVENTS_PATH + "/"):
            return "events"
        if path == CUSTOMERS_PATH or path.startswith(CUSTOMERS_PATH + "/"):
            return "customers"
        return "unknown"

    # -- Stripe endpoints -------------------------------------------------------------------

    async def _stripe(self, scope: Scope, endpoint: str, path: str, body: bytes) -> Response:
        faults = self.faults
        v2 = path.startswith("/v2/")
        if faults.in_scope(endpoint):
            delay = faults.delay()
            if delay:
                await asyncio.sleep(delay)
            refusal = faults.refusal(time.time())
            if refusal is not None:
                return _refusal_response(refusal, v2)
        method = scope["method"]
        now = self.now()
        try:
            state = self.accounts.state(_context(scope, v1=not v2), now)
        except UnknownContextError as exc:
            if v2:
                status, payload = v2_error(
                    400, "invalid_request_error", "invalid_stripe_context", str(exc)
                )
            else:
                status, payload = v1_error(400, str(exc), code="invalid_stripe_context")
            return status, payload, None
        if endpoint == "meter_event_stream" and method == "POST":
            return self._stream(scope, body, now, state)
        if endpoint == "meter_event_session" and method == "POST":
            return self._session(scope, now, state)
        if endpoint == "meter_event_adjustments" and method == "POST":
            return self._adjustment(scope, body, now, state)
        if endpoint in ("meters", "event_summaries"):
            return self._v1_meters(scope, method, path, body, now, state=state)
        if endpoint == "events" and method == "GET":
            return self._v2_events(scope, path, now, state)
        if endpoint == "customers" and method in ("GET", "POST"):
            return self._v1_customers(scope, method, path, body, now, state=state)
        if v2:
            status, payload = v2_error(
                404,
                "invalid_request_error",
                "not_found",
                f"Unrecognized request URL ({method} {path}).",
            )
        else:
            status, payload = v1_error(404, f"Unrecognized request URL ({method}: {path}).")
        return status, payload, None

    def _stream(self, scope: Scope, body: bytes, now: float, state: EmulatorState) -> Response:
        token = _api_key(scope, allow_basic=False)  # session tokens travel as Bearer only
        if token is None:
            status, payload = v2_error(
                401,
                "invalid_request_error",
                "unauthorized",
                "Send the meter event session's authentication_token as a Bearer token.",
            )
            return status, payload, None
        if token.startswith(API_KEY_PREFIXES):
            status, payload = v2_error(
                401,
                "invalid_request_error",
                "unauthorized",
                "The meter event stream takes a meter event session token, not an API key.",
            )
            return status, payload, None
        if not state.has_session(token):
            found, owner = self.accounts.owner_of(token)
            if found:  # a session of another account: refused, and not as an expiry
                status, payload = v2_error(
                    401,
                    "invalid_request_error",
                    "unauthorized",
                    "This meter event session belongs to "
                    f"{owner or 'the platform account'}: send the Stripe-Context it was "
                    "created with.",
                )
                return status, payload, None
        knobs = self.faults.knobs
        if (
            state.use_session(
                token,
                now=now,
                max_requests=knobs.session_max_requests,
                expire_every=knobs.session_expire_every,
            )
            != "ok"
        ):
            status, payload = v2_error(
                401,
                EXPIRED_TYPE,
                EXPIRED_CODE,
                "The meter event session has expired or is unknown; create a new session.",
            )
            return status, payload, None
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            state.record_rejection({}, "invalid_json")
            status, payload = v2_error(
                400, "invalid_request_error", "invalid_json", "The request body is not valid JSON."
            )
            return status, payload, None
        if knobs.events_per_second is not None:
            events = parsed.get("events") if isinstance(parsed, dict) else None
            count = len(events) if isinstance(events, list) else 0
            refusal = self.faults.admit_events(time.time(), count)
            if refusal is not None:
                return _refusal_response(refusal, True)
        try:
            checked, dropped = check_events(
                parsed,
                state.meters,
                auto_meters=knobs.auto_meters,
                now=now,
                customers=knobs.customers if state.account is None else state.customer_ids,
                drop_customers=knobs.drop_customers,
                sync=knobs.sync_validation,
            )
        except RequestRejected as exc:
            state.record_rejection(exc.codes, exc.code)
            status, payload = v2_error(
                400, "invalid_request_error", exc.code, exc.message, exc.param
            )
            return status, payload, None
        state.accept(checked, now, dropped, validation_delay=knobs.validation_delay_seconds)
        return 200, _EMPTY_OBJECT, None

    def _session(self, scope: Scope, now: float, state: EmulatorState) -> Response:
        key = _api_key(scope)
        if not _valid_key(key):
            status, payload = v2_error(
                401,
                "invalid_request_error",
                "invalid_api_key",
                "Invalid API key provided (expected sk_test_, sk_live_ or rk_ keys).",
            )
            return status, payload, None
        assert key is not None
        session = state.create_session(
            livemode=_livemode(key), ttl=self.faults.knobs.session_ttl_seconds, now=now
        )
        return 200, orjson.dumps(session.to_stripe()), None

    def _adjustment(self, scope: Scope, body: bytes, now: float, state: EmulatorState) -> Response:
        key = _api_key(scope)
        if not _valid_key(key):
            status, payload = v2_error(
                401, "invalid_request_error", "invalid_api_key", "Invalid API key provided."
            )
            return status, payload, None
        assert key is not None
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        problem: tuple[str, str] | None = None
        if not isinstance(parsed, dict):
            problem = ("invalid_json", "The request body must be a JSON object.")
        elif parsed.get("type") != "cancel":
            problem = ("parameter_invalid", "type must be 'cancel'.")
        elif not isinstance(parsed.get("event_name"), str) or not parsed["event_name"]:
            problem = ("parameter_missing", "event_name is required.")
        elif not isinstance(parsed.get("cancel"), dict) or not isinstance(
            parsed["cancel"].get("identifier"), str
        ):
            problem = ("parameter_missing", "cancel.identifier is required.")
        if problem is not None:
            status, payload = v2_error(400, "invalid_request_error", *problem)
            return status, payload, None
        assert isinstance(parsed, dict)
        identifier = parsed["cancel"]["identifier"]
        error = state.cancel(parsed["event_name"], identifier, now)
        if error == "resource_missing":
            status, payload = v2_error(
                404,
                "invalid_request_error",
                "resource_missing",
                "No meter event with this identifier was received in the last 24 hours.",
            )
            return status, payload, None
        if error == "already_canceled":
            status, payload = v2_error(
                400, "already_canceled", "already_canceled", "This meter event is already canceled."
            )
            return status, payload, None
        if error is not None:
            status, payload = v2_error(
                400,
                "invalid_request_error",
                error,
                "The event with this identifier was sent with another event_name.",
            )
            return status, payload, None
        adjustment = {
            "id": f"mea_test_{secrets.token_hex(12)}",
            "object": "v2.billing.meter_event_adjustment",
            "cancel": {"identifier": identifier},
            "created": rfc3339(now),
            "event_name": parsed["event_name"],
            "livemode": _livemode(key),
            "status": "complete",
            "type": "cancel",
        }
        return 200, orjson.dumps(adjustment), None

    # -- v2 thin events ---------------------------------------------------------------------

    def _v2_events(self, scope: Scope, path: str, now: float, state: EmulatorState) -> Response:
        key = _api_key(scope)
        if not _valid_key(key):
            status, payload = v2_error(
                401, "invalid_request_error", "invalid_api_key", "Invalid API key provided."
            )
            return status, payload, None
        if path != EVENTS_PATH:
            event_id = path[len(EVENTS_PATH) + 1 :]
            event = state.thin_event(event_id, now) if "/" not in event_id else None
            if event is None:
                status, payload = v2_error(
                    404, "invalid_request_error", "not_found", f"No such event: '{event_id}'"
                )
                return status, payload, None
            return 200, orjson.dumps(event.body), None
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        try:
            query = _events_query(pairs)
        except _ParamError as exc:
            status, payload = v2_error(
                400, "invalid_request_error", exc.code, exc.message, exc.param
            )
            return status, payload, None
        events = state.thin_events(
            now,
            types=query.types,
            object_id=query.object_id,
            **query.created,
        )
        start = 0
        if query.page is not None:
            ids = [e.id for e in events]
            if query.page not in ids:
                status, payload = v2_error(
                    400, "invalid_request_error", "invalid_page", "The page token is not valid."
                )
                return status, payload, None
            start = ids.index(query.page) + 1
        page = events[start : start + query.limit]
        next_url = None
        if start + query.limit < len(events):
            kept = [(k, v) for k, v in pairs if k != "page"]
            next_url = f"{EVENTS_PATH}?{urlencode([*kept, ('page', page[-1].id)])}"
        return (
            200,
            orjson.dumps(
                {
                    "data": [e.body for e in page],
                    "next_page_url": next_url,
                    "previous_page_url": None,
                }
            ),
            None,
        )

    # -- v1 customers -----------------------------------------------------------------------

    def _v1_customers(
        self, scope: Scope, method: str, path: str, body: bytes, now: float, *, state: EmulatorState
    ) -> Response:
        """Create and retrieve customers; creating one turns customer checks on."""
        if not _valid_key(_api_key(scope)):
            status, payload = v1_error(401, "Invalid API Key provided.", code="api_key_invalid")
            return status, payload, None
        knobs = self.faults.knobs
        # The platform's customers are the ``customers`` knob; a connected account's its own.
        known_ids = knobs.customers if state.account is None else state.customer_ids
        if method == "POST" and path == CUSTOMERS_PATH:
            params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            customer_id = params.get("id") or f"cus_{secrets.token_hex(7)}"
            if known_ids is not None and customer_id in known_ids:
                status, payload = v1_error(
                    400,
                    f"Customer already exists: '{customer_id}'",
                    code="resource_already_exists",
                    param="id",
                )
                return status, payload, None
            if state.account is None:
                self.faults.configure(customers=(knobs.customers or frozenset()) | {customer_id})
            else:
                state.customer_ids = (state.customer_ids or frozenset()) | {customer_id}
            customer = {
                "id": customer_id,
                "object": "customer",
                "created": int(now),
                "email": params.get("email"),
                "livemode": False,
                "metadata": {},
                "name": params.get("name"),
            }
            state.customer_objects[customer_id] = customer
            return 200, orjson.dumps(customer), None
        customer_id = path[len(CUSTOMERS_PATH) :].strip("/")
        if method == "GET" and customer_id and "/" not in customer_id:
            if known_ids is None or customer_id in known_ids:
                known = state.customer_objects.get(customer_id) or {
                    "id": customer_id,
                    "object": "customer",
                    "created": 0,
                    "email": None,
                    "livemode": False,
                    "metadata": {},
                    "name": None,
                }
                return 200, orjson.dumps(known), None
            status, payload = v1_error(
                404, f"No such customer: '{customer_id}'", code="resource_missing", param="id"
            )
            return status, payload, None
        status, payload = v1_error(404, f"Unrecognized request URL ({method}: {path}).")
        return status, payload, None

    # -- v1 meters --------------------------------------------------------------------------

    def _v1_meters(
        self, scope: Scope, method: str, path: str, body: bytes, now: float, *, state: EmulatorState
    ) -> Response:
        key = _api_key(scope)
        if key is None:
            status, payload = v1_error(
                401,
                "You did not provide an API key. Provide it as a Bearer token in the "
                "Authorization header.",
            )
            return status, payload, None
        if not _valid_key(key):
            status, payload = v1_error(401, "Invalid API Key provided.", code="api_key_invalid")
            return status, payload, None
        params = dict(
            parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        )
        if method == "POST" and body:
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        parts = path[len(METERS_PATH) :].strip("/").split("/") if path != METERS_PATH else []
        try:
            if not parts:
                if method == "GET":
                    return self._list_meters(params, state)
                if method == "POST":
                    return self._create_meter(params, now, state)
            elif len(parts) == 1 and method in ("GET", "POST"):
                meter = state.meter_by_id(parts[0])
                if meter is not None:
                    return 200, orjson.dumps(meter.to_stripe()), None
                return self._missing_meter(parts[0])
            elif len(parts) == 2 and parts[1] in ("deactivate", "reactivate") and method == "POST":
                updated = state.set_meter_active(parts[0], parts[1] == "reactivate", now)
                if updated is None:
                    return self._missing_meter(parts[0])
                return 200, orjson.dumps(updated.to_stripe()), None
            elif len(parts) == 2 and parts[1] == "event_summaries" and method == "GET":
                return self._event_summaries(parts[0], params, state)
        except _ParamError as exc:
            status, payload = v1_error(400, exc.message, code=exc.code, param=exc.param)
            return status, payload, None
        status, payload = v1_error(404, f"Unrecognized request URL ({method}: {path}).")
        return status, payload, None

    @staticmethod
    def _missing_meter(meter_id: str) -> Response:
        status, payload = v1_error(
            404, f"No such billing meter: '{meter_id}'", code="resource_missing", param="id"
        )
        return status, payload, None

    def _list_meters(self, params: dict[str, str], state: EmulatorState) -> Response:
        limit = _int_param(params, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
        status_filter = params.get("status")
        if status_filter not in (None, "active", "inactive"):
            raise _ParamError("status must be active or inactive", "status", "parameter_invalid")
        # Newest first, as Stripe lists; ties (meters declared together) by event name.
        meters = sorted(state.meter_list(), key=lambda m: (-m.created, m.event_name))
        if status_filter is not None:
            meters = [m for m in meters if m.active == (status_filter == "active")]
        objects = [m.to_stripe() for m in meters]
        return 200, _page(objects, params, limit, METERS_PATH), None

    def _create_meter(self, params: dict[str, str], now: float, state: EmulatorState) -> Response:
        entry: dict[str, Any] = {
            "event_name": params.get("event_name", ""),
            "display_name": params.get("display_name", ""),
            "formula": params.get("default_aggregation[formula]", ""),
            "customer_key": params.get("customer_mapping[event_payload_key]", ""),
            "value_key": params.get("value_settings[event_payload_key]", ""),
            "event_time_window": params.get("event_time_window", ""),
        }
        if not entry["display_name"]:
            raise _ParamError("Missing required param: display_name.", "display_name")
        if not entry["event_name"]:
            raise _ParamError("Missing required param: event_name.", "event_name")
        if not entry["formula"]:
            raise _ParamError(
                "Missing required param: default_aggregation[formula].",
                "default_aggregation[formula]",
            )
        try:
            meter: Meter = meter_from_mapping({k: v for k, v in entry.items() if v})
            meter = state.add_meter(meter, now)
        except MeterSpecError as exc:
            param = (
                "event_time_window"
                if "event_time_window" in str(exc)
                else "default_aggregation[formula]"
            )
            raise _ParamError(str(exc), param, "parameter_invalid") from None
        except ValueError as exc:
            raise _ParamError(str(exc), "event_name", "parameter_invalid") from None
        return 200, orjson.dumps(meter.to_stripe()), None

    def _event_summaries(
        self, meter_id: str, params: dict[str, str], state: EmulatorState
    ) -> Response:
        meter = state.meter_by_id(meter_id)
        if meter is None:
            return self._missing_meter(meter_id)
        customer = params.get("customer")
        if not customer:
            raise _ParamError("Missing required param: customer.", "customer", "parameter_missing")
        start = _int_param(params, "start_time", None, 0, None)
        end = _int_param(params, "end_time", None, 0, None)
        limit = _int_param(params, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
        window_name = params.get("value_grouping_window")
        if window_name is not None and window_name not in GROUPING_WINDOWS:
            raise _ParamError(
                "value_grouping_window must be hour or day",
                "value_grouping_window",
                "parameter_invalid",
            )
        step = GROUPING_WINDOWS[window_name] if window_name else 60
        for name, value in (("start_time", start), ("end_time", end)):
            if value % step:
                unit = window_name or "minute"
                raise _ParamError(
                    f"{name} must be aligned with {unit} boundaries", name, "parameter_invalid"
                )
        if start >= end:
            raise _ParamError(
                "start_time must be before end_time", "start_time", "parameter_invalid"
            )
        windows = (
            [(w, w + step) for w in range(start, end, step)] if window_name else [(start, end)]
        )
        rows = state.summaries(meter.event_name, customer, windows, meter.formula)
        if window_name:  # grouped: only the windows that hold events
            rows = [row for row in rows if row[3]]
        objects = [
            {
                "id": _summary_id(meter.id, customer, w_start, w_end),
                "object": "billing.meter_event_summary",
                "aggregated_value": value,
                "end_time": w_end,
                "livemode": False,
                "meter": meter.id,
                "start_time": w_start,
            }
            for w_start, w_end, value, _ in rows
        ]
        url = f"{METERS_PATH}/{meter.id}/event_summaries"
        return 200, _page(objects, params, limit, url), None

    # -- control ----------------------------------------------------------------------------

    def _control(self, scope: Scope, path: str, body: bytes) -> Response:
        name = path[len(CONTROL_PREFIX) :].strip("/")
        method = scope["method"]
        now = self.now()
        try:
            data = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            return _control_error("the body must be a JSON object")
        if not isinstance(data, dict):
            return _control_error("the body must be a JSON object")
        if name == "health" and method == "GET":
            return 200, b'{"status":"ok"}', None
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        try:
            # Which account's state: ``?account=acct_...`` or a Stripe-Context header.
            state = self.accounts.state(query.get("account") or _context(scope, v1=False), now)
        except UnknownContextError as exc:
            return _control_error(str(exc))
        if name == "stats" and method == "GET":
            report = self.stats(now, state)
            return 200, orjson.dumps(report), None
        if name == "freshness" and method == "GET":
            return 200, orjson.dumps(self.state.freshness()), None
        if name == "freshness/reset" and method == "POST":
            self.state.reset_freshness(now)
            return 200, orjson.dumps(self.state.freshness()), None
        if name == "knobs" and method == "GET":
            return 200, orjson.dumps(self.faults.knobs.to_json()), None
        if name == "configure" and method == "POST":
            expire = data.pop("expire_sessions", False)
            try:
                knobs = self.faults.configure(**data)
            except (KnobError, TypeError) as exc:
                return _control_error(str(exc))
            result: dict[str, Any] = {"knobs": knobs.to_json()}
            if expire:
                result["expired_sessions"] = self.accounts.expire_sessions(self.now())
            return 200, orjson.dumps(result), None
        if name == "expire_sessions" and method == "POST":
            expired = self.accounts.expire_sessions(now)
            return 200, orjson.dumps({"expired_sessions": expired}), None
        if name == "reset" and method == "POST":
            self.reset(keep_knobs=bool(data.get("keep_knobs", False)))
            return 200, orjson.dumps({"knobs": self.faults.knobs.to_json()}), None
        if name == "seen" and method == "GET":
            identifier = query.get("identifier", "")
            return (
                200,
                orjson.dumps({"identifier": identifier, "seen": state.seen(identifier)}),
                None,
            )
        if name == "meters" and method == "POST":
            try:
                meter = state.add_meter(meter_from_mapping(data), now)
            except ValueError as exc:  # MeterSpecError is a ValueError
                return _control_error(str(exc))
            return 200, orjson.dumps(meter.to_stripe()), None
        return (
            404,
            orjson.dumps(
                {
                    "error": {
                        "type": "invalid_request_error",
                        "message": f"no control endpoint {method} {path}",
                    }
                }
            ),
            None,
        )

    def reset(self, *, keep_knobs: bool = False) -> None:
        """Forget everything accepted (and restore the start-up knobs unless ``keep_knobs``)."""
        if not keep_knobs:
            self.faults.reset(self.initial_knobs)
        else:
            self.faults.reset(self.faults.knobs)
        self.accounts.reset(self.now())

    def stats(self, now: float, state: EmulatorState | None = None) -> dict[str, Any]:
        """The inspection report of ``state`` (the platform by default), with the knobs,
        the faults injected and the connected accounts seen."""
        report = (state or self.state).stats(now)
        report["account"] = (state or self.state).account
        report["accounts"] = sorted(self.accounts.connected())
        report["knobs"] = self.faults.knobs.to_json()
        report["faults_injected"] = dict(self.faults.injected)
        return report


class _ParamError(Exception):
    def __init__(self, message: str, param: str, code: str = "parameter_missing") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _control_error(message: str) -> Response:
    return 400, orjson.dumps({"error": {"type": "invalid_request_error", "message": message}}), None


def _int_param(
    params: dict[str, str], name: str, default: int | None, low: int, high: int | None
) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        if default is None:
            raise _ParamError(f"Missing required param: {name}.", name, "parameter_missing")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _ParamError(
            f"Invalid integer: {raw[:40]}", name, "parameter_invalid_integer"
        ) from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _ParamError(f"{name} must be {bound}", name, "parameter_invalid_integer")
    return value


@dataclass
class _EventsQuery:
    types: list[str]
    object_id: str | None
    created: dict[str, float]
    limit: int
    page: str | None


_CREATED_PARAM = re.compile(r"created\[(gt|gte|lt|lte)\]")
_TYPES_PARAM = re.compile(r"types(\[\d*\])?")


def _events_query(pairs: list[tuple[str, str]]) -> _EventsQuery:
    """``GET /v2/core/events`` parameters: ``types`` repeated (also ``types[]``,
    ``types[0]``), ``created[gt|gte|lt|lte]`` (ISO 8601), ``object_id``, ``limit``, ``page``."""
    query = _EventsQuery(
        types=[], object_id=None, created={}, limit=DEFAULT_EVENTS_LIMIT, page=None
    )
    for name, value in pairs:
        created = _CREATED_PARAM.fullmatch(name)
        if _TYPES_PARAM.fullmatch(name):
            query.types.append(value)
        elif created:
            moment = parse_timestamp(value)
            if moment is None:
                raise _ParamError(
                    f"{name} must be an ISO 8601 date-time with an offset, e.g. "
                    "2024-06-01T12:00:00.000Z",
                    name,
                    "invalid_timestamp",
                )
            query.created[created.group(1)] = moment
        elif name == "object_id":
            query.object_id = value
        elif name == "limit":
            query.limit = _int_param({name: value}, name, None, 1, MAX_EVENTS_LIMIT)
        elif name == "page":
            query.page = value
        else:
            raise _ParamError(f"unknown parameter: {name}", name, "parameter_unknown")
    if len(query.types) > MAX_EVENT_TYPES:
        raise _ParamError(
            f"types names {len(query.types)} event types; at most {MAX_EVENT_TYPES} are allowed",
            "types",
            "parameter_invalid",
        )
    return query


def _page(objects: list[dict[str, Any]], params: dict[str, str], limit: int, url: str) -> bytes:
    """A v1 list envelope honouring ``starting_after`` / ``ending_before`` cursors."""
    after = params.get("starting_after")
    before = params.get("ending_before")
    ids = [o["id"] for o in objects]
    if after:
        if after not in ids:
            raise _ParamError(f"No such object: '{after}'", "starting_after", "resource_missing")
        objects = objects[ids.index(after) + 1 :]
        page, has_more = objects[:limit], len(objects) > limit
    elif before:
        if before not in ids:
            raise _ParamError(f"No such object: '{before}'", "ending_before", "resource_missing")
        objects = objects[: ids.index(before)]
        page, has_more = objects[-limit:], len(objects) > limit
    else:
        page, has_more = objects[:limit], len(objects) > limit
    return orjson.dumps({"object": "list", "data": page, "has_more": has_more, "url": url})


def _summary_id(meter_id: str, customer: str, start: int, end: int) -> str:
    digest = hashlib.sha256(f"{meter_id}|{customer}|{start}|{end}".encode()).hexdigest()[:24]
    return f"mtrusg_test_{digest}"
