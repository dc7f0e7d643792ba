"""identifier_for(): deterministic, within Stripe's 100 characters, never shared by two events."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.identifiers import identifier_for

Position = tuple[str, int, int, str | None]


def _derived(position: Position) -> str:
    topic, partition, offset, event_name = position
    return identifier_for(
        None, topic=topic, partition=partition, offset=offset, event_name=event_name
    )


def _unescape_until_separator(text: str) -> tuple[str, str | None]:
    """Split at the first unescaped '#': the documented format, read back."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            out.append(text[i + 1])
            i += 2
            continue
        if char == "#":
            return "".join(out), text[i + 1 :]
        out.append(char)
        i += 1
    return "".join(out), None


def _read_back_derived(identifier: str) -> Position:
    """Invert a derived identifier: proves the encoding is injective."""
    head, event_name = _unescape_until_separator(identifier)
    topic, partition, offset = head.rsplit("/", 2)
    return topic, int(partition), int(offset), event_name


def test_the_records_own_id_is_used_as_it_is() -> None:
    assert identifier_for("rec-42", topic="usage", partition=3, offset=7) == "rec-42"


def test_fan_out_appends_the_event_name() -> None:
    assert (
        identifier_for("rec-42", topic="usage", partition=3, offset=7, event_name="input_tokens")
        == "rec-42#input_tokens"
    )


def test_without_an_id_the_kafka_position_is_the_identity() -> None:
    assert identifier_for(None, topic="usage", partition=3, offset=7) == "usage/3/7"
    assert identifier_for("", topic="usage", partition=3, offset=7) == "usage/3/7"
    assert (
        identifier_for(None, topic="usage", partition=3, offset=7, event_name="output_tokens")
        == "usage/3/7#output_tokens"
    )


def test_separators_inside_ids_cannot_fake_another_event() -> None:
    # Without escaping, ("a#b", "c") and ("a", "b#c") would both be "a#b#c".
    one = identifier_for("a#b", topic="t", partition=0, offset=0, event_name="c")
    two = identifier_for("a", topic="t", partition=0, offset=0, event_name="b#c")
    assert one != two
    assert one == "a\\#b#c"
    # ...and a topic that looks like a position plus an event name.
    three = _derived(("a/1/2#x", 3, 4, None))
    four = _derived(("a", 1, 2, "x/3/4"))
    assert three != four


def test_long_inputs_are_hashed_to_a_fixed_length() -> None:
    long_id = "r" * 101
    ident = identifier_for(long_id, topic="usage", partition=0, offset=0)
    assert ident == "sha256:" + hashlib.sha256(long_id.encode()).hexdigest()
    assert len(ident) == 71
    assert identifier_for("r" * 100, topic="usage", partition=0, offset=0) == "r" * 100
    fanned = identifier_for("r" * 90, topic="u", partition=0, offset=0, event_name="e" * 20)
    assert fanned.startswith("sha256:")
    assert len(fanned) == 71


def test_non_ascii_is_held_to_100_bytes_too() -> None:
    short = "é" * 50  # 50 characters, 100 bytes: fits either reading
    assert identifier_for(short, topic="t", partition=0, offset=0) == short
    assert identifier_for("é" * 51, topic="t", partition=0, offset=0).startswith("sha256:")


def test_identifiers_are_the_same_in_another_process() -> None:
    # Another interpreter with a different hash seed: nothing may depend on hash().
    inputs = [("rec-1", None), (None, None), (None, "input_tokens"), ("x" * 300, "e")]
    here = [
        identifier_for(rid, topic="usage", partition=5, offset=123, event_name=e)
        for rid, e in inputs
    ]
    code = (
        "from connector.identifiers import identifier_for as f\n"
        f"for rid, e in {inputs!r}:\n"
        "    print(f(rid, topic='usage', partition=5, offset=123, event_name=e))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.splitlines() == here


_TOPICS = st.text(min_size=1, max_size=40) | st.sampled_from(["usage", "a/1/2", "a#b", "t\\"])
_NAMES = st.none() | st.text(min_size=1, max_size=40) | st.sampled_from(["#", "\\", "x/1/2"])
_POSITIONS = st.tuples(_TOPICS, st.integers(0, 10_000), st.integers(0, 2**63 - 1), _NAMES)


@settings(max_examples=500, deadline=None)
@given(_POSITIONS)
def test_derived_identifiers_read_back_to_their_inputs(position: Position) -> None:
    ident = _derived(position)
    assert len(ident) <= 100
    assert len(ident.encode("utf-8", "surrogatepass")) <= 100
    if not ident.startswith("sha256:"):
        assert _read_back_derived(ident) == position


@settings(max_examples=200, deadline=None)
@given(st.lists(_POSITIONS, min_size=2, max_size=30, unique=True))
def test_distinct_positions_get_distinct_identifiers(positions: list[Position]) -> None:
    idents = [_derived(p) for p in positions]
    assert len(set(idents)) == len(positions)
    assert idents == [_derived(p) for p in positions]  # deterministic


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=30))
def test_fanned_out_record_ids_read_back(record_id: str, event_name: str) -> None:
    ident = identifier_for(record_id, topic="t", partition=0, offset=0, event_name=event_name)
    assert len(ident) <= 100
    if not ident.startswith("sha256:"):
        assert _unescape_until_separator(ident) == (record_id, event_name)


@pytest.mark.parametrize("offset", [0, 1, 2**63 - 1])
def test_positions_differ_by_offset_alone(offset: int) -> None:
    assert _derived(("usage", 0, offset, None)) != _derived(("usage", 0, offset + 1, None))
