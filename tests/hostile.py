"""Hypothesis strategies for hostile and valid clicks, shared by the parser's property tests and the
worker's fuzz test. Each hostile message carries exactly one fault and the DLQ reason it must get."""

from __future__ import annotations

import json

from hypothesis import strategies as st

NOW = 1.8e9  # the parser's clock in the property tests
IDS = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=("Cs", "Cc")),
    min_size=1,
    max_size=24,
)
ID = IDS | st.integers(min_value=0, max_value=10**12)
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
EXTRAS = st.dictionaries(
    st.text(max_size=10).filter(
        lambda k: k not in ("session_id", "item_id", "timestamp", "user_id", "event_id")
    ),
    JUNK,
    max_size=3,
)


KINDS = (
    "empty", "not_utf8", "not_json", "nan", "not_object", "missing", "bad_type", "empty_id", "long_id",
    "control_id", "negative_ts", "future_ts", "typed_ts", "too_large",
)  # fmt: skip


@st.composite
def valid_click(draw, timestamps: bool = True) -> dict:
    """A well-formed click, sometimes with extra fields of any shape (they are ignored, not refused)."""
    value = {"session_id": draw(ID), "item_id": draw(ID), **draw(EXTRAS)}
    if timestamps and draw(st.booleans()):
        value["timestamp"] = draw(st.floats(min_value=NOW - 1e7, max_value=NOW) | st.integers(0, int(NOW)))
    return value


def _bytes(value: object) -> bytes:
    return json.dumps(value).encode()


@st.composite
def hostile_message(
    draw, max_bytes: int = 4096, max_id_length: int = 64, now: float = NOW, kind: str | None = None
) -> tuple[bytes, str]:
    """(raw message, expected DLQ reason) with one fault of `kind` (any, if None); the parser must be run
    with these limits."""
    base = {"session_id": draw(IDS), "item_id": draw(IDS)}
    field = draw(st.sampled_from(["session_id", "item_id"]))
    kind = kind or draw(st.sampled_from(KINDS))
    if kind == "empty":
        return b"", "empty"
    if kind == "not_utf8":
        return b"\xff" + draw(st.binary(max_size=40)), "not_utf8"
    if kind == "not_json":
        text = _bytes(base)
        cut = draw(st.integers(1, len(text) - 1))
        return text[:cut], "not_json"  # a truncated object
    if kind == "nan":
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        return _bytes(base)[:-1] + f', "timestamp": {token}}}'.encode(), "not_json"
    if kind == "not_object":
        return _bytes(
            draw(st.lists(JUNK, max_size=3) | st.integers() | st.text(max_size=10) | st.none())
        ), "not_object"
    if kind == "missing":
        del base[field]
        return _bytes({**base, **draw(EXTRAS)}), f"missing_{field}"
    if kind == "bad_type":
        base[field] = draw(
            st.booleans()
            | st.floats(allow_nan=False, allow_infinity=False)  # Infinity is not JSON: the "nan" kind
            | st.lists(IDS, max_size=2)
            | st.dictionaries(IDS, IDS, max_size=2)
        )
        return _bytes(base), "bad_type"
    if kind == "empty_id":
        base[field] = ""
        return _bytes(base), "bad_id"
    if kind == "long_id":
        base[field] = "x" * draw(st.integers(max_id_length + 1, max_id_length + 200))
        return _bytes(base), "bad_id"
    if kind == "control_id":
        base[field] = draw(IDS) + chr(draw(st.integers(0, 31) | st.integers(0x7F, 0x9F)))
        return _bytes(base), "bad_id"
    if kind == "negative_ts":
        base["timestamp"] = draw(st.floats(max_value=-1e-6, allow_infinity=False) | st.integers(max_value=-1))
        return _bytes(base), "bad_timestamp"
    if kind == "future_ts":
        base["timestamp"] = draw(st.floats(min_value=now + 2 * 86400, max_value=1e300))
        return _bytes(base), "bad_timestamp"
    if kind == "typed_ts":
        base["timestamp"] = draw(st.booleans() | st.text(max_size=10) | st.lists(st.integers(), max_size=2))
        return _bytes(base), "bad_timestamp"
    base["item_id"] = "x" * max_bytes  # an id larger than the whole message limit
    return _bytes(base), "too_large"
