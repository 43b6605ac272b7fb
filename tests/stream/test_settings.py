"""The one settings mechanism: a flag beats its variable, the variable its default; a bad value is one
clear error; and the README documents every variable there is."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from model.errors import UserError
from stream.settings import (
    BrokerSettings,
    KafkaSettings,
    SecuritySettings,
    TrainerSettings,
    WorkerSettings,
    variable,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_a_flag_beats_its_variable_and_the_variable_its_default():
    env = {"NEXTCLICK_K": "7", "NEXTCLICK_METRICS_PORT": "9300", "KAFKA_BOOTSTRAP": "b:1"}
    s = WorkerSettings.from_env(env, metrics_port=9400, registry=None)
    assert (s.k, s.metrics_port, s.bootstrap, s.registry) == (7, 9400, "b:1", None)
    assert WorkerSettings.from_env({}).k == WorkerSettings().k == 20


def test_values_are_read_by_their_type():
    env = {
        "NEXTCLICK_CREATE_TOPICS": "0",
        "NEXTCLICK_CHANGELOG_CATCHUP": "auto",
        "NEXTCLICK_SCORE_BF16": "true",
        "NEXTCLICK_BATCH_WAIT_MS": "2.5",
        "NEXTCLICK_CHECKPOINT": "",  # empty = unset
    }
    s = WorkerSettings.from_env(env)
    assert s.create_topics is False and s.changelog_catchup is None and s.score_bf16 is True
    assert s.batch_wait_ms == 2.5 and s.checkpoint is None


@pytest.mark.parametrize(
    ("name", "raw"),
    [("NEXTCLICK_PARTITIONS", "four"), ("NEXTCLICK_CREATE_TOPICS", "maybe"), ("NEXTCLICK_SESSION_TTL", "1h")],
)
def test_a_value_that_does_not_parse_is_one_clear_error(name, raw):
    with pytest.raises(UserError, match=name):
        WorkerSettings.from_env({name: raw})


def test_an_unknown_override_is_a_programming_error():
    with pytest.raises(TypeError, match="no setting"):
        WorkerSettings.from_env({}, chekpoint="x")


def test_the_trainer_shares_the_cluster_settings_and_has_its_own_variables():
    env = {
        "NEXTCLICK_APP_ID": "shop",
        "NEXTCLICK_TOPIC_SESSIONS": "s2",
        "NEXTCLICK_METRICS_PORT": "9100",  # the worker's: not the trainer's
        "NEXTCLICK_TRAINER_METRICS_PORT": "9200",
        "NEXTCLICK_TRAINER_WARM_START": "0",
        "NEXTCLICK_REGISTRY": "/r/registry",
    }
    t = TrainerSettings.from_env(env)
    assert (t.group, t.topic_sessions, t.metrics_port, t.warm_start) == ("shop-trainer", "s2", 9200, False)
    assert t.log_path == Path("/r/session-log")
    assert issubclass(TrainerSettings, KafkaSettings) and issubclass(WorkerSettings, KafkaSettings)


def test_the_readme_documents_every_variable():
    text = README.read_text()
    missing = [
        name
        for cls in (WorkerSettings, TrainerSettings, BrokerSettings, SecuritySettings)
        for field in dataclasses.fields(cls)
        if (name := variable(field)) and f"`{name}`" not in text
    ]
    assert not missing, f"README's Configuration table lacks {missing}"
