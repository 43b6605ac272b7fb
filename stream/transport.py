"""Faust's aiokafka transport with a configurable consumer fetch wait.

Faust hard-codes `fetch_max_wait_ms=1500` for its worker consumer. A broker may hold a fetch for up to that
long when no new data is there, which on the embedded Tansu broker cost ~0.75 s per hop (measured:
stock Faust p50 1.2 s at 500 clicks/s; 18 ms with a 20 ms wait). The consumer is created by Faust and
started later, so setting its wait before start is enough; nothing else of the driver changes.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as driver


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = int(getattr(self.app, "fetch_wait_ms", 1500))
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    Consumer = _Consumer


class App(faust.App):
    """faust.App whose worker consumer uses `fetch_wait_ms` (milliseconds) as its fetch wait."""

    fetch_wait_ms: int = 1500

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)
