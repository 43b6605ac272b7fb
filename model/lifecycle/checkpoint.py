"""Checkpoints: a folder with `weights.safetensors` (named tensors) and `meta.json` (model name,
hyperparameters, vocabulary, data fingerprint, metrics, created_at). Nothing is ever unpickled.

`meta.json` also holds the model's fallback list (`model.models.fallback`: the training data's recent popularity,
for sessions the model cannot score); a model without one is refused, so no checkpoint lacks it.

A checkpoint is written to a temporary sibling folder and renamed into place, so a reader never sees half
of one; loading checks the format version, the model name, the vocabulary and every tensor's presence
before the model is handed out.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.data.vocab import ItemVocab
from model.errors import UserError
from model.models.base import Recommender
from model.models.fallback import Fallback
from model.models.zoo import model_class
from model.training.params import params_to_dict, saved_params

FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
META = "meta.json"


class CheckpointError(UserError):
    """A checkpoint folder that is missing, corrupt, truncated or made for another model or vocabulary."""


def save_checkpoint(
    model: Recommender,
    out: str | Path,
    *,
    data: dict[str, Any] | None = None,
    metrics: dict | None = None,
    history: dict | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    if model.fallback is None:
        raise CheckpointError(
            f"{model.name}: no fallback list for cold sessions (fit it with model.training.fit_model, "
            "which records the training data's recent popularity)"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared with workers
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_tensors().items()}
        if tensors:
            save_file(tensors, str(tmp / WEIGHTS))
        meta = {
            "format_version": FORMAT_VERSION,
            "model": model.name,
            "params": params_to_dict(model.params),
            "n_items": model.n_items,
            "vocab": model.vocab.ids[1:],
            "tensors": sorted(tensors),
            "data": data or {},
            "metrics": metrics or {},
            "history": history or {},
            "fallback": model.fallback.to_json(),
            "created_at": time.time(),
            **(extra or {}),
        }
        (tmp / META).write_text(json.dumps(meta))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not (p / META).is_file():
        raise CheckpointError(f"{p}: not a checkpoint (no {META})")
    try:
        meta = json.loads((p / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{p}/{META}: corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{p}: unsupported checkpoint format {meta.get('format_version')!r}")
    for key in ("model", "params", "vocab", "n_items", "tensors"):
        if key not in meta:
            raise CheckpointError(f"{p}/{META}: missing {key!r}")
    if len(meta["vocab"]) != meta["n_items"]:
        raise CheckpointError(
            f"{p}/{META}: vocabulary has {len(meta['vocab'])} items, expected {meta['n_items']}"
        )
    return meta


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[Recommender, dict[str, Any]]:
    p = Path(path)
    meta = read_meta(p)
    cls = model_class(meta["model"])
    params = saved_params(cls.Params, meta["params"])
    model = cls(ItemVocab(meta["vocab"]), params, device=device)
    try:
        model.fallback = Fallback.from_json(meta.get("fallback"))
    except ValueError as exc:
        raise CheckpointError(
            f"{p}/{META}: no usable fallback list ({exc}); a checkpoint from before nextclick recorded "
            "one: train it again"
        ) from None
    tensors: dict[str, torch.Tensor] = {}
    if meta["tensors"]:
        try:
            tensors = load_file(str(p / WEIGHTS), device="cpu")
        except (SafetensorError, FileNotFoundError, OSError, ValueError) as exc:
            raise CheckpointError(f"{p}/{WEIGHTS}: unreadable ({exc})") from None
    if sorted(tensors) != sorted(meta["tensors"]):
        raise CheckpointError(
            f"{p}: tensors {sorted(tensors)[:4]} do not match meta.json {meta['tensors'][:4]}"
        )
    try:
        model.load_state_tensors(tensors)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{p}: weights do not fit the {meta['model']} model ({exc})") from None
    model.to(device)
    return model, meta
