"""Hyperparameters from a JSON/TOML file and `--set NAME=VALUE`, checked against the model's dataclass.

Names follow each model's reference implementation (GRU4Rec's `layers`, `n_sample`...; SR-GNN's
`hidden_size`, `lr_dc_step`...). A value is converted to the field's declared type, so `--set layers=512`
and `--set loss=bpr-max` both work; an unknown name or a value of the wrong type is a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from pathlib import Path
from typing import Any

from model.errors import UserError


def read_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        if p.suffix == ".toml":
            return tomllib.loads(p.read_text())
        return json.loads(p.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'} ({exc})") from None


def parse_sets(sets: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in sets:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--set {item!r}: expected NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def _convert(name: str, value: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, type(int | None)):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        kind = args[0]
    if origin in (list, tuple):
        inner = typing.get_args(kind)[0]
        parts = value if isinstance(value, list | tuple) else str(value).strip("[]() ").split(",")
        return (
            type(parts)(_convert(name, p, inner) for p in parts)
            if origin is list
            else tuple(_convert(name, p, inner) for p in parts)
        )
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if kind is float:
            return float(value)
        if kind is str:
            return str(value)
    except (TypeError, ValueError):
        raise UserError(f"hyperparameter {name}: {value!r} is not a valid {kind.__name__}") from None
    return value


def build_params(cls: type, config: dict[str, Any] | None = None, sets: dict[str, Any] | None = None) -> Any:
    """An instance of the dataclass `cls` with defaults overridden by config, then by sets."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for source in (config or {}, sets or {}):
        for name, value in source.items():
            if name not in fields:
                valid = ", ".join(sorted(fields)) or "none"
                raise UserError(f"unknown hyperparameter {name!r} for this model (valid: {valid})")
            values[name] = _convert(name, value, hints[name])
    return cls(**values)


def params_to_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)


def saved_params(cls: type, saved: dict[str, Any]) -> Any:
    """The hyperparameters a checkpoint was trained with. A field it does not name was added after it was
    saved, and takes the value that keeps the behaviour of then (the field's `metadata["before"]`) where
    today's default would change it: a model is served as it was evaluated."""
    before = {
        f.name: f.metadata["before"]
        for f in dataclasses.fields(cls)
        if "before" in f.metadata and f.name not in saved
    }
    return build_params(cls, {**saved, **before})
