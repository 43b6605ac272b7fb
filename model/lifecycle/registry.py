"""A versioned model registry on a local folder: what the trainer publishes and the workers serve.

    ROOT/v000001/      a checkpoint (weights.safetensors + meta.json), never changed once published
    ROOT/v000002/
    ROOT/LATEST        the version the workers serve, one line

A version is written to a hidden temporary folder, loaded back and checked (`verify`), then renamed into
place; LATEST is replaced atomically (write a temporary file, `os.replace`). A reader therefore sees a
whole version or none, and a crash mid-publish leaves only a hidden temporary folder that the next publish
removes. The interface is narrow (publish, versions, latest, promote, path) so an object store can stand in
for the folder later.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.errors import UserError
from model.lifecycle.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from model.models.base import Recommender

LATEST = "LATEST"
VERSION = re.compile(r"^v(\d{6})$")


@dataclass(frozen=True)
class VersionInfo:
    version: str
    model: str
    created_at: float
    metrics: dict[str, Any]
    latest: bool


def canary(model: Recommender, k: int = 20) -> None:
    """A prediction for a few known items must give k distinct real items and finite scores; raises
    CheckpointError otherwise (weights full of NaN, an empty vocabulary, a broken model)."""
    if model.n_items < 1:
        raise CheckpointError("the model has no items")
    probe = [np.array([i], dtype=np.int64) for i in range(1, min(model.n_items, 3) + 1)]
    with torch.inference_mode():
        items, scores = model.recommend(probe, k=min(k, model.n_items))
    if not torch.isfinite(scores).all():
        raise CheckpointError("canary prediction gave non-finite scores")
    if int(items.min()) < 1 or int(items.max()) > model.n_items:
        raise CheckpointError("canary prediction gave items outside the vocabulary")


def verify(path: str | Path, k: int = 20) -> tuple[Recommender, dict[str, Any]]:
    """Load a checkpoint as a worker would and run the canary: what every version passes before serving."""
    model, meta = load_checkpoint(path, "cpu")
    canary(model, k)
    return model, meta


class Registry:
    def __init__(self, root: str | Path, keep: int = 5) -> None:
        self.root = Path(root)
        self.keep = keep

    # -- reading -----------------------------------------------------------------------------------------
    def path(self, version: str) -> Path:
        if not VERSION.match(version):
            raise UserError(f"{version!r} is not a version name (expected v000001 style)")
        return self.root / version

    def latest(self) -> str | None:
        try:
            version = (self.root / LATEST).read_text().strip()
        except FileNotFoundError:
            return None
        return version if VERSION.match(version) else None

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if VERSION.match(p.name) and p.is_dir())

    def versions(self) -> list[VersionInfo]:
        latest = self.latest()
        out = []
        for name in self.names():
            try:
                meta = read_meta(self.root / name)
            except CheckpointError:
                continue
            out.append(
                VersionInfo(
                    name,
                    meta["model"],
                    float(meta.get("created_at", 0)),
                    meta.get("metrics", {}),
                    name == latest,
                )
            )
        return out

    # -- writing -----------------------------------------------------------------------------------------
    def publish(self, model: Recommender, **checkpoint: Any) -> str:
        """Write, verify, rename into place, point LATEST at it, prune old versions; returns the version."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".v*"):  # what a crashed publish left behind
            shutil.rmtree(stale, ignore_errors=True)
        names = self.names()
        number = int(VERSION.match(names[-1]).group(1)) + 1 if names else 1  # type: ignore[union-attr]
        version = f"v{number:06d}"
        staging = self.root / f".{version}.staging"
        extra = {**checkpoint.pop("extra", {}), "version": version, "published_at": time.time()}
        save_checkpoint(model, staging, extra=extra, **checkpoint)
        verify(staging)
        os.rename(staging, self.root / version)  # fails rather than overwrite if the name was taken
        self._point_latest(version)
        self.prune()
        return version

    def promote(self, version: str) -> None:
        """Serve `version` (a rollback or a roll forward): it must load and pass the canary first."""
        path = self.path(version)
        if not path.is_dir():
            raise UserError(f"{self.root}: no version {version} (have: {', '.join(self.names()) or 'none'})")
        verify(path)
        self._point_latest(version)

    def prune(self) -> list[str]:
        latest = self.latest()
        names = self.names()
        doomed = [n for n in names[: max(len(names) - self.keep, 0)] if n != latest]
        for name in doomed:
            shutil.rmtree(self.root / name, ignore_errors=True)
        return doomed

    def _point_latest(self, version: str) -> None:
        tmp = self.root / f".{LATEST}.{os.getpid()}"
        with open(tmp, "w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / LATEST)
