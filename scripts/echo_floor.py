"""The floor under any worker on a broker: a raw aiokafka consumer -> producer echo (`bench_serve.py`).

Every click is sent back unchanged to the recommendations topic (its JSON carries the `event_id` the load
generator times), with no parsing, no state, no model and no Faust: what one consumer group member and one
producer cost on this broker and box, so a worker's latency can be read as a multiple of it. Same
settings as the worker where they matter (`stream.settings.WorkerSettings` from the environment): the
consumer's fetch wait (NEXTCLICK_FETCH_WAIT_MS), the producer's linger (NEXTCLICK_PRODUCER_LINGER_MS),
acks=1, the topics and their partitions, the consumer group's session settings, auto-committed offsets.

    python scripts/echo_floor.py
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from stream.settings import WorkerSettings

log = logging.getLogger("echo-floor")


async def create_topics(s: WorkerSettings) -> None:
    """The clicks and recommendations topics, as the worker would create them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap)
    await admin.start()
    try:
        for name in (s.topic_clicks, s.topic_recommendations):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(name, s.partitions, s.replication_factor)])
    finally:
        await admin.close()


async def echo(s: WorkerSettings) -> None:
    await create_topics(s)
    consumer = AIOKafkaConsumer(
        s.topic_clicks,
        bootstrap_servers=s.bootstrap,
        group_id=s.app_id,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=s.fetch_wait_ms,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, acks=1, linger_ms=int(s.producer_linger_ms))
    await producer.start()
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        # the line `stream.worker.process.WorkerProcess.wait_ready` waits for, as Faust's worker logs it
        log.info(
            "[^Worker]: Ready (echo floor, partitions %s)",
            sorted(tp.partition for tp in consumer.assignment()),
        )
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for record in records:
                    await producer.send(s.topic_recommendations, record.value, key=record.key)
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(echo(WorkerSettings.from_env()))


if __name__ == "__main__":
    main()
