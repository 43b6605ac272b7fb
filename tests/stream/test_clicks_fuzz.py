"""Property tests of the click parser: whatever the bytes, a Click or an InvalidClick with a known reason."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.metrics import DLQ_REASONS
from stream.worker.clicks import Click, InvalidClick, parse_click
from tests.hostile import NOW, hostile_message, valid_click

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome(raw: bytes) -> Click | str:
    try:
        return parse_click(raw, max_bytes=4096, max_id_length=64, now=NOW)
    except InvalidClick as bad:
        assert bad.reason in DLQ_REASONS and bad.reason != "internal_error"
        return bad.reason


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_give_a_click_or_a_known_reason(raw):
    _outcome(raw)


@FUZZ
@given(hostile_message())
def test_every_hostile_message_is_refused_with_its_reason(case):
    raw, reason = case
    assert _outcome(raw) == reason


@FUZZ
@given(valid_click())
def test_every_valid_click_parses_to_its_fields(value):
    click = _outcome(json.dumps(value).encode())
    assert isinstance(click, Click)
    assert click.session_id == str(value["session_id"]) and click.item_id == str(value["item_id"])
    if "timestamp" in value:
        assert math.isclose(click.timestamp, value["timestamp"])


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=30,
    )
)
def test_any_json_value_gives_a_click_or_a_known_reason(value):
    _outcome(json.dumps(value).encode())


def test_nesting_deeper_than_the_parser_recurses_is_not_json():
    shallow = b'{"session_id": "s", "item_id": 1, "x": ' + b"[" * 50 + b"]" * 50 + b"}"
    assert parse_click(shallow).item_id == "1"  # extra fields, however nested, are ignored
    deep = b"[" * 100_000 + b"]" * 100_000
    assert _outcome_with(deep, max_bytes=1 << 20) == "not_json"


def _outcome_with(raw: bytes, **limits) -> str:
    try:
        parse_click(raw, **limits)
    except InvalidClick as bad:
        return bad.reason
    return "valid"


@FUZZ
@given(
    st.integers(min_value=2**63, max_value=10**60) | st.integers(min_value=-(10**60), max_value=-(2**63) - 1)
)
def test_an_integer_id_beyond_64_bits_is_read_as_its_digits(big):
    """orjson reads such an integer as a float; the parser must still give the standard library's answer."""
    click = _outcome(json.dumps({"session_id": big, "item_id": big, "event_id": big}).encode())
    assert isinstance(click, Click) and click.session_id == click.item_id == click.event_id == str(big)
