"""A bare Faust agent, the floor under `nextclick worker` in `scripts/bench_serve.py --bare`.

Per click: a JSON parse, one table update (one changelog write) and one JSON message out; no validation,
no batching, no model, no metrics. Same transport, broker settings and topics as the worker
(`stream.app.base_app`, settings from the environment), so the difference between the two is what the
pipeline itself costs. This is the kind of agent issue #6 quotes for scale.

    python scripts/bare_agent.py worker --loglevel info
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faust.types import StreamT

from stream.app import base_app
from stream.config import Settings

settings = Settings.from_env()
app = base_app(settings)
clicks = app.topic(settings.topic_clicks, key_serializer="raw", value_serializer="raw")
answers = app.topic(settings.topic_recommendations, key_serializer="raw", value_serializer="json")
last_item = app.Table("last-item", default=None, partitions=settings.partitions, key_type=str)


@app.agent(clicks)
async def answer(stream: StreamT) -> None:
    async for event in stream.events():
        click = json.loads(event.value)
        last_item[click["session_id"]] = click["item_id"]
        await answers.send(key=event.key, value={"event_id": click["event_id"], "items": [click["item_id"]]})


if __name__ == "__main__":
    app.main()
