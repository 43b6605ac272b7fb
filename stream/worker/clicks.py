"""Parsing and validating messages from the `clicks` topic. Nothing here trusts its input.

A click is a JSON object `{"session_id", "item_id", "timestamp"?, "user_id"?, "event_id"?}`; integer ids
are read as strings. Anything else raises `InvalidClick` with a short machine-readable reason, which the
worker puts on the message it forwards to the dead-letter topic.

Per click this is on the worker's hot path, so it parses with orjson (C, about 3x the standard library's
`json` on a click) and checks ids for control characters with one regular-expression search. orjson
differs from `json` in two corners: it refuses nesting deeper than 1,024, and it reads an integer beyond
64 bits as a float (an id of 30 digits would become a float and be refused). A message orjson refuses, or
one with a float where an id belongs, is parsed again by `json`, so what is valid and each refusal's reason
stay the standard library's (tests/stream/test_clicks_fuzz.py).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass

import orjson

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode's Cc: C0, DEL, C1
ID_FIELDS = ("session_id", "item_id", "user_id", "event_id")


class InvalidClick(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Click:
    session_id: str
    item_id: str
    timestamp: float | None = None
    user_id: str | None = None
    event_id: str | None = None


def _id(value: object, field: str, max_len: int, required: bool) -> str | None:
    if value is None:
        if required:
            raise InvalidClick(f"missing_{field}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidClick("bad_type", f"{field} must be a string or an integer")
    text = str(value)
    if not text or len(text) > max_len:
        raise InvalidClick("bad_id", f"{field} must have 1..{max_len} characters")
    if _CONTROL.search(text):
        raise InvalidClick("bad_id", f"{field} has control characters")
    return text


def parse_click(
    raw: bytes | None,
    *,
    max_bytes: int = 65536,
    max_id_length: int = 256,
    max_future_seconds: float = 86400.0,
    now: float | None = None,
) -> Click:
    if raw is None or len(raw) == 0:
        raise InvalidClick("empty")
    if len(raw) > max_bytes:
        raise InvalidClick("too_large", f"{len(raw)} bytes > {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidClick("not_utf8") from None
    try:
        obj = orjson.loads(text)  # NaN and Infinity are refused, as below
    except orjson.JSONDecodeError:
        obj = None
    if obj is None or (isinstance(obj, dict) and any(isinstance(obj.get(f), float) for f in ID_FIELDS)):
        try:
            obj = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        except (ValueError, RecursionError) as exc:
            raise InvalidClick("not_json", str(exc)[:80]) from None
    if not isinstance(obj, dict):
        raise InvalidClick("not_object")
    session_id = _id(obj.get("session_id"), "session_id", max_id_length, True)
    item_id = _id(obj.get("item_id"), "item_id", max_id_length, True)
    ts = obj.get("timestamp")
    if ts is not None:
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) or ts < 0:
            raise InvalidClick("bad_timestamp", "timestamp must be non-negative epoch seconds")
        if ts > (now if now is not None else time.time()) + max_future_seconds:
            raise InvalidClick("bad_timestamp", "timestamp is in the future")
        ts = float(ts)
    return Click(
        session_id=session_id or "",
        item_id=item_id or "",
        timestamp=ts,
        user_id=_id(obj.get("user_id"), "user_id", max_id_length, False),
        event_id=_id(obj.get("event_id"), "event_id", max_id_length, False),
    )
