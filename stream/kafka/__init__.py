"""Kafka itself: the local brokers (embedded Tansu, Apache Kafka from its jars) and the clients of the
CLI, demo and trainer, with the SASL/SSL settings (`stream.settings.SecuritySettings`) that every client,
aiokafka's and Faust's included, takes. Uses `model.errors`, `stream.settings` and `stream.processes` only.

Two client stacks stay, each where the other would not fit. kafka-python is synchronous: it is what a
shop's own scripts use to publish clicks and read recommendations, so `replay`, `tail`, the trainer's
session log and the tests speak Kafka the way a user's code does, without an event loop. aiokafka is
what Faust runs on: the worker's consumer and producer are Faust's aiokafka driver, and the two readers
that live inside the worker's event loop (the changelog repair, `stream.worker.changelog`, and the
hot-swap listener, `stream.worker.hotswap`) use aiokafka so they never block that loop.
"""
