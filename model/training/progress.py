"""Progress lines while a model trains.

They go to stderr with the progress bars: stdout carries what a command prints as its result (with
`--json`, one JSON object as its last line, for a pipe to read)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def report_epoch(name: str, record: dict[str, Any]) -> None:
    """One line per epoch: the model, the epoch and the record's figures."""
    figures = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float))
    tqdm.write(f"{name} epoch {record.get('epoch')}: {figures}", file=sys.stderr)
