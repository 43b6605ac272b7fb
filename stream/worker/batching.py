"""The clicks agent's batches: whatever arrived while the agent was busy, taken the moment it is free.

Faust's `Stream.take_events(max_, within)` wakes on a fixed period: after every batch it waits `within`
seconds (5 ms here) before the next one unless `max_` events arrived first, so every click waited up to
`within` for nothing at low rates, and at high rates the agent stood idle `within` per batch while clicks
queued (at 2,000 clicks/s and a 28 ms model call, 5 ms of every 33 ms: `scripts/bench_serve.py`).
`take_ready` waits for the first event only: a click that finds the agent free is handled at once, alone;
clicks that arrive while a batch is answered form the next batch, so batches grow with the load by
themselves, up to `max_`. Everything else is as in Faust's `take_events`, on the same stream hooks: the
stream drains passively into a buffer (a full buffer holds it back until taken), acks are off while it
runs and each event is acked after the loop body that handled it returns, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from faust.types import TP, EventT, StreamT


async def take_ready(
    stream: StreamT, max_: int, assigned: Callable[[], set[TP]] | None = None
) -> AsyncIterator[list[EventT]]:
    """Batches of at most `max_` events: every one buffered since the last batch, as soon as there is one.

    Clicks keep arriving in the buffer while a batch is answered, so a rebalance can find some there that
    Faust's own queues would have dropped (it clears them when partitions are revoked, and the new owner
    reads them again from the committed offset). `assigned` gives the partitions this worker holds now:
    a buffered event of any other is dropped unacked, as Faust drops its queued ones, or this worker would
    answer it and write its session to a changelog partition another worker owns."""
    buffer: list[EventT] = []
    arrived = asyncio.Event()
    taken = asyncio.Event()

    async def into_buffer(value: Any) -> Any:
        while len(buffer) >= max_ and not stream.should_stop:
            taken.clear()
            await stream.wait(taken)
        event = stream.current_event
        if event is None:
            raise RuntimeError("an event reached the batch buffer without a current event")
        buffer.append(event)
        arrived.set()
        return value

    acks = stream.enable_acks
    stream.enable_acks = False  # acked below, once handled
    stream.add_processor(into_buffer)
    stream._enable_passive(aiter(stream.channel))  # the hook Faust's own take_events uses
    try:
        while not stream.should_stop:
            if await stream.wait_for_stopped(arrived):
                break
            batch = buffer[:max_]
            del buffer[: len(batch)]
            if not buffer:
                arrived.clear()
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
    finally:
        stream.enable_acks = acks
        stream._processors.remove(into_buffer)
