"""The typed wire (clients.messages): one header type and one worker-snapshot type for both
sides, and namespaces that keep the run config's keys apart from everything else."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flwr.app import Message, MessageType
from flwr.supercore.task_identity import TaskIdentity

from clients import messages
from clients.messages import RoundHeader, WorkerSnapshot
from fedcoop.config import RunConfig
from tests.conftest import assert_replayed

EVERY_FIELD = RoundHeader(
    update_rule="mix-before-step",
    client_rule="correction",
    round=7,
    local_steps=4,
    sync=6,
    self_weight=0.25,
    adopt=True,
    reset=True,
    collect=6,
    send_state=True,
    restore=WorkerSnapshot(5, 20, {"x": np.arange(3.0), "momentum": np.ones(3)}),
)


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower builds a message only inside a run (as the ServerApp's process is)."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def sent(config: RunConfig, header: RoundHeader, **vectors: np.ndarray) -> Message:
    content = messages.train_content(config, header, **vectors)
    return Message(content, 1, MessageType.TRAIN, group_id="7")


def test_no_config_key_is_in_a_wire_namespace_and_every_wire_entry_is() -> None:
    config_keys = list(RunConfig().to_mapping())
    assert all(messages.is_config_key(k) for k in config_keys)
    record = messages.train_record(sent(RunConfig(), EVERY_FIELD, init=np.zeros(3), mix=np.ones(3)))
    wire = set(record) - set(config_keys)
    assert len(wire) == len(record) - len(config_keys)  # no entry shares a config key's name
    assert wire and not any(messages.is_config_key(k) for k in wire)


def test_a_config_and_a_header_that_name_the_same_thing_both_arrive_intact() -> None:
    """The config's update-rule and the header's (the rule the server resolved) differ:
    a flat record kept one of them."""
    config = RunConfig(update_rule="mix-after-step", eager_reply=True)
    msg = sent(config, EVERY_FIELD, init=np.zeros(3), mix=np.full(3, 2.0))
    assert messages.read_config(msg) == config
    header, init, mix = messages.read_train(msg)
    restored = header.restore
    assert dataclasses.replace(header, restore=None) == dataclasses.replace(
        EVERY_FIELD, restore=None
    )
    assert restored is not None and (restored.round, restored.steps) == (5, 20)
    for name, array in EVERY_FIELD.restore.arrays.items():
        assert_replayed(restored.arrays[name], array)
    assert_replayed(init, np.zeros(3))
    assert_replayed(mix, np.full(3, 2.0))


def test_a_header_without_a_round_only_collects_and_leaves_its_unset_fields_out() -> None:
    header = RoundHeader(collect=3)
    assert set(header.entries()) == {
        "header:update-rule",
        "header:client-rule",
        "header:local-steps",
        "header:self-weight",
        "header:adopt",
        "header:reset",
        "header:collect",
        "header:send-state",
    }
    read, init, mix = messages.read_train(sent(RunConfig(), header))
    assert read == header and read.round is None and init is None and mix is None


@pytest.mark.parametrize(
    ("key", "value"),
    [("header:round", "7"), ("header:adopt", 1), ("header:self-weight", True)],
)
def test_a_header_entry_of_the_wrong_type_is_refused_by_name(key: str, value: object) -> None:
    msg = sent(RunConfig(), EVERY_FIELD)
    messages.train_record(msg)[key] = value
    with pytest.raises(ValueError, match=key):
        messages.read_train(msg)


def test_a_round_without_its_rules_is_refused() -> None:
    with pytest.raises(ValueError, match="update_rule"):
        messages.read_train(sent(RunConfig(), RoundHeader(round=2, client_rule="mix")))


def test_a_snapshot_round_trips_and_one_without_a_whole_round_is_refused() -> None:
    snapshot = WorkerSnapshot(3, 12, {"x": np.arange(4, dtype=np.float32)})
    back = WorkerSnapshot.read(snapshot.entries())
    assert back is not None and (back.round, back.steps) == (3, 12)
    assert_replayed(back.arrays["x"], snapshot.arrays["x"])
    assert back.arrays["x"].dtype == np.float32
    assert WorkerSnapshot.read({}) is None
    for bad in (1.5, "3", True):
        with pytest.raises(ValueError, match="whole round"):
            WorkerSnapshot.read({**snapshot.entries(), messages.STATE_ROUND: bad})
