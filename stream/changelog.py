"""Reading a table's changelog partitions to their real end, independent of the broker's end offsets."""

from __future__ import annotations

import json
from typing import Any

from stream.clients import aiokafka_security


async def read_changelog(
    bootstrap: str, topic: str, partitions: list[int] | dict[int, int], idle_ms: int = 100
) -> tuple[dict[str, Any], int]:
    """The last value of every key in `partitions` of `topic` (None for a tombstone), and the number of
    records read.

    Reads from the beginning (or, for a dict partition -> offset, from that offset) until every
    partition's position has passed the reported end offset (a lower bound on Tansu, exact on Kafka) and
    one more fetch of `idle_ms` brings nothing. Keys and values are JSON, as Faust writes a table with str
    keys and dict values."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
        **aiokafka_security(),
    )
    await consumer.start()
    latest: dict[str, Any] = {}
    read = 0
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        if isinstance(partitions, dict):
            for tp in tps:
                consumer.seek(tp, partitions[tp.partition])
        else:
            await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=idle_ms)
            for records in batch.values():
                read += len(records)
                for r in records:
                    latest[json.loads(r.key)] = None if r.value is None else json.loads(r.value)
            if not batch and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                return latest, read
    finally:
        await consumer.stop()
