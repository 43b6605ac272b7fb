"""Reading a table's changelog partitions to their real end, independent of the broker's end offsets."""

from __future__ import annotations

import json
from typing import Any

from stream.kafka.clients import aiokafka_security


async def read_changelog(
    bootstrap: str, topic: str, partitions: list[int] | dict[int, int], idle_ms: int = 100
) -> tuple[dict[str, Any], int]:
    """The last value of every key in `partitions` of `topic` (None for a tombstone), and the number of
    records read.

    Reads from the beginning (or, for a dict partition -> offset, from that offset, which must hold a
    record: the last one Faust's recovery applied) until every partition's position has passed the
    reported end offset (a lower bound on Tansu, exact on Kafka) and the start record, and one more fetch
    of `idle_ms` brings nothing. Without the start record in the condition a read starting beyond Tansu's
    reported end stopped at the first empty fetch, before the broker had answered at all (a CI run lost a
    session's clicks that way). Keys and values are JSON, as Faust writes a table with str keys and dict
    values."""
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
        if isinstance(partitions, dict):  # the start record itself must come back
            ends = {tp: max(end, partitions[tp.partition] + 1) if partitions[tp.partition] > 0 else end
                    for tp, end in ends.items()}  # fmt: skip
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
