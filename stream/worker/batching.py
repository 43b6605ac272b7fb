"""The clicks agent's batches: whatever arrived while the agent was busy, taken the moment it is free.

Faust's `Stream.take_events(max_, within)` wakes on a fixed period: after every batch it waits `within`
seconds (5 ms here) before the next one unless `max_` events arrived first, so a click that found the
agent idle still waited for the period's end (V-SKNN at 100 clicks/s: p50 1.6x the floor's,
`scripts/bench_serve.py`). `take_ready` waits for the first event only: a click that finds the agent idle
is handled at once, alone; clicks that arrive while a batch is answered form the next batch, which waits
up to `settle` for more only when the agent is busy (see `take_ready`). Everything else is as in Faust's
`take_events`, on the same stream hooks: the stream drains passively into a buffer (a full buffer holds it
back until taken), acks are off while it runs and each event is acked after the loop body that handled it
returns, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from faust.types import TP, EventT, StreamT


async def take_ready(
    stream: StreamT, max_: int, assigned: Callable[[], set[TP]] | None = None, settle: float = 0.0
) -> AsyncIterator[list[EventT]]:
    """Batches of at most `max_` events: every one buffered since the last batch, as soon as there is one.

    Under load, taking at once makes many small batches, and each has its cost (a model call, a write of
    how far each partition is absorbed): in two runs at 1,000 clicks/s V-SKNN's p50 was 1.4x and 1.6x that
    of Faust's 5 ms period, with batches of 11-15 clicks against 14-23. So when clicks were already waiting
    as a batch finished (the agent is busy), the next batch waits up to `settle` seconds for more (or
    until `max_`); a click that finds the agent idle is still taken at once.

    Clicks keep arriving in the buffer while a batch is answered, so a rebalance can find some there that
    Faust's own queues would have dropped (it clears them when partitions are revoked, and the new owner
    reads them again from the committed offset). `assigned` gives the partitions this worker holds now:
    a buffered event of any other is dropped unacked, as Faust drops its queued ones, or this worker would
    answer it and write its session to a changelog partition another worker owns."""
    buffer: list[EventT] = []
    arrived = asyncio.Event()
    taken = asyncio.Event()
    full = asyncio.Event()
    busy = False  # clicks were waiting when the last batch finished

    async def into_buffer(value: Any) -> Any:
        while len(buffer) >= max_ and not stream.should_stop:
            taken.clear()
            await stream.wait(taken)
        event = stream.current_event
        if event is None:
            raise RuntimeError("an event reached the batch buffer without a current event")
        buffer.append(event)
        arrived.set()
        if len(buffer) >= max_:
            full.set()
        return value

    acks = stream.enable_acks
    stream.enable_acks = False  # acked below, once handled
    stream.add_processor(into_buffer)
    stream._enable_passive(aiter(stream.channel))  # the hook Faust's own take_events uses
    try:
        while not stream.should_stop:
            if not buffer and await stream.wait_for_stopped(arrived):  # a busy agent's clicks are there
                break
            if busy and settle > 0 and len(buffer) < max_:
                # plain asyncio: mode's wait_for_stopped reports a timeout as the stream stopping
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(full.wait(), settle)
            batch = buffer[:max_]
            del buffer[: len(batch)]
            if not buffer:
                arrived.clear()
            full.clear()
            taken.set()
            if assigned is not None:
                held = assigned()
                batch = [event for event in batch if event.message.tp in held]
                if not batch:
                    continue
            try:
                yield batch
            finally:
                for event in batch:
                    await stream.ack(event)
            busy = bool(buffer)
    finally:
        stream.enable_acks = acks
        stream._processors.remove(into_buffer)
