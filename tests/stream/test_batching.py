"""The clicks agent's batching (`stream.worker.batching.take_ready`) on a Faust agent's in-memory test
channel: no broker involved, only the stream hooks the batching uses."""

from __future__ import annotations

import asyncio
import itertools
import time

import faust
from faust.types import TP

from stream.worker.batching import take_ready


def test_a_free_agent_takes_a_click_at_once_and_a_busy_one_batches_what_arrived_meanwhile():
    app = faust.App("take-ready-test", store="memory://")
    batches: list[list[int]] = []
    handled_at: list[float] = []

    @app.agent()
    async def agent(stream):
        async for events in take_ready(stream, 3):
            handled_at.append(time.monotonic())
            batches.append([event.value for event in events])
            await asyncio.sleep(0.3)  # busy: the next clicks queue meanwhile

    async def scenario() -> float:
        async with agent.test_context() as running:
            put = time.monotonic()
            await running.put(1)
            await asyncio.sleep(0.05)  # the agent is busy with click 1
            for value in range(2, 9):
                await running.put(value)
            await asyncio.sleep(1.5)
        return put

    put = asyncio.run(scenario())
    # click 1 alone, then at most 3 of those that came while the agent was busy, in order, none left out
    assert batches == [[1], [2, 3, 4], [5, 6, 7], [8]]
    # handled when it arrived, not on a timer's next tick (Faust's take_events waits `within` each time;
    # the bounds are loose for a busy CI box: they catch a tick of 0.1 s or more, not Faust's 5 ms)
    assert handled_at[0] - put < 0.1
    # each batch the moment the previous one was done (0.3 s apart), not a tick later
    assert all(0.29 < b - a < 0.45 for a, b in itertools.pairwise(handled_at))


def test_buffered_clicks_of_a_partition_no_longer_held_are_dropped_not_answered():
    """After a rebalance the new owner reads them again from the committed offset: answering them here
    would write their sessions into a changelog partition another worker owns."""
    app = faust.App("take-ready-revoked-test", store="memory://")
    held: set[TP] = set()
    batches: list[list[int]] = []

    @app.agent()
    async def agent(stream):
        async for events in take_ready(stream, 10, assigned=lambda: held):
            batches.append([event.value for event in events])

    async def scenario() -> None:
        async with agent.test_context() as running:
            await running.put(1)  # its partition not held: dropped
            await asyncio.sleep(0.1)
            held.add(TP(f"{app.conf.id}-{agent.name}", 0))  # the test channel's one partition
            await running.put(2)
            await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert batches == [[2]]


def test_a_busy_agent_lets_its_next_batch_gather_for_settle_seconds():
    """Under load fewer, larger batches (one model call each); an idle agent still takes a click at once."""
    app = faust.App("take-ready-settle-test", store="memory://")
    batches: list[list[int]] = []

    @app.agent()
    async def agent(stream):
        async for events in take_ready(stream, 10, settle=0.3):
            batches.append([event.value for event in events])
            await asyncio.sleep(0.2)

    async def scenario() -> None:
        async with agent.test_context() as running:
            await running.put(1)  # idle: at once
            await asyncio.sleep(0.05)
            await running.put(2)  # busy with 1: waits, then gathers
            await asyncio.sleep(0.3)  # batch 1 done at 0.2 s; [2] gathers until 0.5 s
            await running.put(3)
            await asyncio.sleep(1.0)

    asyncio.run(scenario())
    assert batches == [[1], [2, 3]]
