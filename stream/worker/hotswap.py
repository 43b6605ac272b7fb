"""Hot swap: every worker follows the registry's LATEST version, woken early by `model-updates`.

The registry is the truth: an announcement only makes a worker look at LATEST now instead of at its next
poll, so a missed announcement delays a swap but never prevents it, and a rollback (`nextclick model
promote`) is followed the same way. Each worker reads `model-updates` with its own group-less consumer,
so every worker sees every announcement (a consumer group would hand each one to a single member).

A new version is loaded and checked off the event loop (checkpoint format, tensors against meta.json,
vocabulary, a canary prediction) and swapped in between micro-batches; the old model keeps serving until
then. A version that fails is refused with a log line and `nextclick_model_load_failures_total`, and is
not retried until LATEST names another version. GRU4Rec hidden states are never carried across models:
the new `Served` starts with an empty state cache, rebuilt from each session's stored history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from model.errors import UserError
from model.lifecycle.registry import Registry, canary
from stream.kafka.clients import every_partition_from_now
from stream.worker.inference import Served, load_served

log = logging.getLogger("nextclick.hotswap")


def load_verified(path: str, device: str, k: int, bf16: bool | None) -> Served:
    served = load_served(path, device, k, bf16)
    canary(served.model, k)
    return served


class ModelWatcher:
    def __init__(
        self,
        registry: str,
        *,
        bootstrap: str,
        topic: str,
        poll_interval: float,
        load: Callable[[str], Served],
        on_swap: Callable[[Served, float], Awaitable[None]],
        on_refused: Callable[[str, str], None],
    ) -> None:
        self.registry = Registry(registry)
        self.bootstrap = bootstrap
        self.topic = topic
        self.poll_interval = poll_interval
        self.load = load
        self.on_swap = on_swap
        self.on_refused = on_refused
        self.current: str | None = None
        self.refused: set[str] = set()
        self.wake = asyncio.Event()

    async def first(self) -> Served:
        """The version to start with; waits (polling) while the registry has none yet.

        A LATEST that names a version which cannot be served (pruned by hand, copied in half, corrupt) is
        refused with an error line and the newest version that loads serves meanwhile: a stale registry
        must not leave every visitor without an answer. The worker moves to LATEST's version as soon as
        LATEST names one that loads."""
        warned = False
        while True:
            version = self.registry.latest()
            if version is not None and version not in self.refused:
                served = await self._try_load(version)
                if served is not None:
                    return served
            if version is not None:
                for other in reversed(self.registry.names()):
                    if other in self.refused:
                        continue
                    served = await self._try_load(other)
                    if served is not None:
                        log.error("LATEST names %s, which cannot be served; serving %s, the newest version "
                                  "that loads, until LATEST names one that does", version, other)  # fmt: skip
                        return served
            if not warned:
                log.warning("registry %s has no servable version yet; waiting for one", self.registry.root)
                warned = True
            await asyncio.sleep(self.poll_interval)

    async def run(self) -> None:
        listener = asyncio.get_running_loop().create_task(self._listen())
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.poll_interval)
                self.wake.clear()
                version = self.registry.latest()
                if version is None or version == self.current or version in self.refused:
                    continue
                t0 = time.perf_counter()
                served = await self._try_load(version)
                if served is not None:
                    await self.on_swap(served, time.perf_counter() - t0)
        finally:
            listener.cancel()

    async def _try_load(self, version: str) -> Served | None:
        path = str(self.registry.path(version))
        try:
            served = await asyncio.get_running_loop().run_in_executor(None, self.load, path)
        except Exception as exc:
            self.refused.add(version)
            reason = "invalid_checkpoint" if isinstance(exc, UserError) else "load_error"
            keeps = f"{self.current} keeps serving" if self.current else "no model serves yet"
            log.error("refusing model version %s (%s: %s); %s", version, reason, exc, keeps)
            self.on_refused(version, reason)
            return None
        self.current = version
        return served

    async def _listen(self) -> None:
        """Wake the poll loop on every announcement; reconnect after errors (a lost one is only a delay)."""
        while True:
            consumer = every_partition_from_now(self.topic, self.bootstrap, fetch_max_wait_ms=100)
            try:
                await consumer.start()
                async for msg in consumer:
                    announced: Any = None
                    with contextlib.suppress(json.JSONDecodeError, AttributeError, UnicodeDecodeError):
                        announced = json.loads(msg.value).get("version")
                    log.info("model-updates announced %s", announced)
                    self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("model-updates listener: %r; retrying", exc)
                await asyncio.sleep(2.0)
            finally:
                await consumer.stop()
