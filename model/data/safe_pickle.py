"""Reading the SR-GNN / GCE-GNN pickles without running code.

A pickle is a program: `pickle.load` on a file from the internet can execute anything its author wrote
(`__reduce__` payloads). These files only ever hold lists, tuples and ints, which the pickle machine builds
from opcodes alone; everything that could run code needs a global (`find_class`) or a persistent id, and
both are refused here before anything is called. The loaded value is then checked against the expected
shape, so strings, floats, dicts or sets are refused too.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from model.errors import DataError

PICKLE_MAGIC = b"\x80"


class _ListsAndIntsOnly(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, name: str) -> None:
        super().__init__(file)
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        raise DataError(
            f"{self._name}: refused: the pickle asks for {module}.{name}; only lists, tuples and ints are allowed"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self._name}: refused: the pickle uses persistent ids; only lists, tuples and ints")


def load_restricted(path: Path) -> Any:
    """Unpickle a file that may contain only lists, tuples and ints (checked after loading too)."""
    try:
        with open(path, "rb") as f:
            value = _ListsAndIntsOnly(f, str(path)).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise DataError(f"{path}: not a readable pickle ({exc.__class__.__name__}: {exc})") from None
    _check_plain(value, str(path))
    return value


def _check_plain(value: Any, name: str) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is int:
            continue
        if t is list or t is tuple:
            if all(type(x) is int for x in v):
                continue
            stack.extend(v)
            continue
        raise DataError(
            f"{name}: refused: the pickle holds a {t.__name__}; only lists, tuples and ints are allowed"
        )


def load_session_list(path: Path) -> list[list[int]]:
    value = load_restricted(path)
    if not isinstance(value, list) or not all(isinstance(s, list | tuple) for s in value):
        raise DataError(f"{path}: expected a list of sessions (lists of item ids)")
    if not value:
        raise DataError(f"{path}: holds no sessions")
    return value


def load_prefix_label_pair(path: Path) -> tuple[list[list[int]], list[int]]:
    value = load_restricted(path)
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and isinstance(value[0], list | tuple)
        and isinstance(value[1], list | tuple)
        and len(value[0]) == len(value[1])
        and all(isinstance(s, list | tuple) for s in value[0])
        and all(type(x) is int for x in value[1])
    )
    if not ok:
        raise DataError(f"{path}: expected a pair (list of input prefixes, list of next-item labels)")
    if not value[1]:
        raise DataError(f"{path}: holds no test samples")
    return list(value[0]), list(value[1])
