"""Deterministic meter event identifiers: a resend reuses them, so Stripe bills once (DESIGN 3.2).

Stripe drops an event whose ``identifier`` it has seen in the last 24 hours. So the
identifier must be a pure function of the record, identical in every process and after
every restart, and distinct for distinct events:

=============================  =====================================================
record id, one event           ``<id>`` (unchanged)
record id, fan-out             ``<id escaped>#<event name>``
no record id, one event        ``<topic escaped>/<partition>/<offset>``
no record id, fan-out          ``<topic escaped>/<partition>/<offset>#<event name>``
=============================  =====================================================

"escaped" puts a backslash before ``\\`` and ``#``, so the first unescaped ``#`` always
splits the id from the event name, whatever either contains; partition and offset are
integers, so the last two ``/`` split them off the topic. (Kafka topic names cannot hold
``\\`` or ``#``, so escaping never changes a real topic.) Anything longer than Stripe's
100 characters (or 100 UTF-8 bytes) becomes ``sha256:<64 hex digits>`` of that text.

Limits worth knowing: a derived identifier names a Kafka position, so a topic deleted and
re-created (offsets restarting at 0) within 24 hours, or two clusters with the same topic
names feeding one Stripe account, would reuse identifiers and Stripe would drop the later
events. Records that carry their own ``id`` avoid both; producers should set one.
"""

from __future__ import annotations

import hashlib

#: Stripe's limit for ``identifier`` (stated for v1 meter events; held for v2 as well).
MAX_IDENTIFIER_LENGTH = 100
#: Separates the record's identity from the event name in a fanned-out event.
FAN_OUT_SEPARATOR = "#"
#: Marks a hashed identifier; 7 + 64 characters stays inside the 100-character limit.
HASH_PREFIX = "sha256:"


def identifier_for(
    record_id: str | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    event_name: str | None = None,
) -> str:
    """The identifier of one meter event; pass ``event_name`` only when the record fans out.

    ``record_id`` is the record's own id when it has one (``None`` or ``""``: derive from
    the Kafka position). Always at most 100 characters.
    """
    if record_id:
        if event_name is None:
            text = record_id
        else:
            text = _escape(record_id) + FAN_OUT_SEPARATOR + event_name
    else:
        text = f"{_escape(topic)}/{partition}/{offset}"
        if event_name is not None:
            text = text + FAN_OUT_SEPARATOR + event_name
    if len(text) > MAX_IDENTIFIER_LENGTH or (not text.isascii() and _too_long_in_utf8(text)):
        return hashed(text)
    return text


def hashed(text: str) -> str:
    """``sha256:<hex>`` of ``text``: fixed length, stable across processes and versions."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return HASH_PREFIX + digest


def _too_long_in_utf8(text: str) -> bool:
    # Whether Stripe counts characters or bytes is not documented: hold to both.
    return len(text.encode("utf-8", "surrogatepass")) > MAX_IDENTIFIER_LENGTH


def _escape(text: str) -> str:
    if "\\" not in text and FAN_OUT_SEPARATOR not in text:
        return text
    return text.replace("\\", "\\\\").replace(FAN_OUT_SEPARATOR, "\\" + FAN_OUT_SEPARATOR)
