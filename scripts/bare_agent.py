"""A bare Faust agent, the floor under `nextclick worker` in `scripts/bench_serve.py --bare`.

Per click: a JSON parse, one table update (one changelog write) and one JSON message out; no validation,
no model, no metrics. Same transport, broker settings and topics as the worker (`stream.worker.pipeline.base_app`,
settings from the environment), so the difference between the two is what the pipeline itself costs.
This is the kind of agent issue #6 quotes for scale. With BARE_AGENT_BATCH=1 it takes clicks in batches
as the worker does (`stream.worker.batching.take_ready`, at most NEXTCLICK_BATCH_SIZE), one at a time otherwise.

    python scripts/bare_agent.py worker --loglevel info
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faust.types import EventT, StreamT

from stream.settings import WorkerSettings
from stream.worker.batching import take_ready
from stream.worker.pipeline import base_app

settings = WorkerSettings.from_env()
app = base_app(settings)
clicks = app.topic(  # created when missing, as the worker's is
    settings.topic_clicks,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
    internal=True,
)
answers = app.topic(
    settings.topic_recommendations,
    key_serializer="raw",
    value_serializer="json",
    partitions=settings.partitions,
)
last_item = app.Table("last-item", default=None, partitions=settings.partitions, key_type=str)


async def handle(event: EventT) -> None:
    click = json.loads(event.value)
    last_item.data[click["session_id"]] = click["item_id"]
    last_item.send_changelog(event.message.partition, click["session_id"], click["item_id"])
    await answers.send(key=event.key, value={"event_id": click["event_id"], "items": [click["item_id"]]})


@app.agent(clicks)
async def answer(stream: StreamT) -> None:
    if os.environ.get("BARE_AGENT_BATCH") == "1":
        async for events in take_ready(stream, settings.batch_size, settle=settings.batch_wait_ms / 1000.0):
            for event in events:
                await handle(event)
    else:
        async for event in stream.events():
            await handle(event)


if __name__ == "__main__":
    app.main()
