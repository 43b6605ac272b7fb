"""Kafka itself: the local brokers (embedded Tansu, Apache Kafka from its jars) and the clients of the
CLI, demo and trainer (kafka-python) with the SASL/SSL settings that every client, aiokafka's and Faust's
included, takes from the environment. Uses `model.errors` only from the rest of the project."""
