"""Reading a table's changelog partitions to their real end, independent of the broker's end offsets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from stream.kafka.clients import aiokafka_security


class ChangelogRead(NamedTuple):
    latest: dict[str, Any]  # every key's last value (None for a tombstone)
    records: int  # read
    last: dict[int, int]  # partition -> offset of the last record read (none read: absent)
    reported_end: dict[int, int]  # partition -> the end offset the broker reported (Tansu: too low)


async def read_changelog(
    bootstrap: str,
    topic: str,
    partitions: list[int] | dict[int, int],
    idle_ms: int = 100,
    decode: Callable[[Any], Any] | None = None,
    apply: Callable[[str, Any], Any] | None = None,
    copy: Callable[[int, bytes, bytes | None], Any] | None = None,
) -> ChangelogRead:
    """The last value of every key in `partitions` of `topic`, the number of records read and the last
    offset read in each partition. `decode` turns each JSON value into what is kept, as it is read (a
    million sessions kept as JSON objects until the end would double the reader's peak memory). `apply`
    takes each record (key, decoded value or None) in the order read instead of the returned `latest`,
    which stays empty: a restore of a million sessions then writes its table once, not a dict of them and
    then the table (2 s and a million-entry dict more at 1M). `copy` takes each record's partition, key
    and value as the broker sent them, nothing decoded (a store that keeps the changelog's own bytes,
    `stream.worker.rocks`).

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
    last: dict[int, int] = {}
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
        reported = {tp.partition: end for tp, end in ends.items()}
        if isinstance(partitions, dict):  # the start record itself must come back
            ends = {tp: max(end, partitions[tp.partition] + 1) if partitions[tp.partition] > 0 else end
                    for tp, end in ends.items()}  # fmt: skip
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=idle_ms)
            for tp, records in batch.items():
                read += len(records)
                for r in records:
                    if copy is not None:
                        copy(tp.partition, r.key, r.value)
                        continue
                    value = None if r.value is None else orjson.loads(r.value)
                    if decode is not None and value is not None:
                        value = decode(value)
                    if apply is None:
                        latest[orjson.loads(r.key)] = value
                    else:
                        apply(orjson.loads(r.key), value)
                if records:
                    last[tp.partition] = records[-1].offset
            if not batch and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                return ChangelogRead(latest, read, last, reported)
    finally:
        await consumer.stop()
