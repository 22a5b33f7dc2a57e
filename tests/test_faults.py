"""Faults a run survives, through the real strategy and ClientApp on InProcessGrid.

A worker that raises, misses the round deadline, or sends an unusable reply (NaN/Inf, a
wrong shape or dtype, a missing or extra tensor, a wrong or never-sent round number, a model
far from the rest or far larger than the model, a reply in another node's name) is left out
of that round, logged with node and reason, and counted; the run goes on and ends with the
models of the matrix rule run over the workers that did answer. Only a round that loses its
quorum stops the run, naming every reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType

from clients import messages
from clients.client_app import app as client_app
from fedcoop import participation
from fedcoop.config import RunConfig
from fedcoop.errors import RunFailed
from simulations import compare, results
from simulations.inprocess import InProcessGrid
from strategies.result import RunResult
from strategies.server_app import run
from tests.conftest import (
    SlowNodeGrid,
    assert_matches_reference,
    explode,
    least_squares_config,
    misbehaving,
    recorded_result,
    round_of,
    set_model,
    tamper,
)

pytestmark = [pytest.mark.cross_path, pytest.mark.flower]


@pytest.mark.parametrize("algorithm", ["local-sgd", "overlap", "dpsgd"])
def test_a_client_that_raises_is_left_out_of_its_round(algorithm: str) -> None:
    config = least_squares_config(algorithm=algorithm, num_clients=6)
    grid = InProcessGrid(misbehaving(2, [2], explode), config.num_clients)
    result = run(grid, config)
    (failed,) = result.events
    assert (failed["round"], failed["worker"], failed["kind"]) == (2, 2, "failed")
    assert failed["node"] == result.node_of_worker[2]
    assert "RuntimeError: disk full on the device" in failed["reason"]
    counts = [(row["participants"], row["dropped"]) for row in result.rounds]
    assert counts == [(6, 0), (5, 1), (6, 0), (6, 0)]
    assert_matches_reference(config, result)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (set_model(lambda x: np.where(np.arange(x.size) == 0, np.nan, x)), "NaN or Inf"),
        (set_model(lambda x: np.full_like(x, np.inf)), "NaN or Inf"),
        (set_model(lambda x: x[:-1]), "shape"),
        (set_model(lambda x: x.astype(np.float32)), "dtype float32"),
        (set_model(lambda x: np.empty(0)), "shape"),
        (
            lambda reply: messages.reply_record(reply).pop(messages.MODEL),
            "no ['x'] entries in the reply",
        ),
        (
            lambda reply: messages.reply_record(reply).__setitem__(
                "extra", messages.reply_record(reply)[messages.MODEL]
            ),
            "entries ['extra'], which a reply does not have",
        ),
        (
            lambda reply: messages.reply_record(reply).__setitem__("round", 3),
            "reply says round 3, the message was round 2",
        ),
        # a round that is never sent
        (
            lambda reply: messages.reply_record(reply).__setitem__("round", 10**6),
            "reply says round 1000000, the message was round 2",
        ),
        (
            lambda reply: messages.reply_record(reply).__setitem__("train-loss", "low"),
            "entries ['train-loss'] are not numbers",
        ),
        (
            lambda reply: messages.reply_record(reply).__setitem__(messages.MODEL, b"not npy"),
            "unreadable vector",
        ),
        (
            lambda reply: messages.reply_record(reply).__setitem__(messages.STATE_ROUND, 2),
            "a worker state without a whole round and step count",
        ),
        # far larger than the model: an extra vector of 100 models (refused by its name,
        # not decoded), a state array or a model of 100x the entries (refused by its size
        # before it is decoded; the coordinator's shape check would refuse the model only
        # once decoded)
        (
            lambda reply: messages.reply_record(reply).__setitem__(
                "extra",
                messages.encode(
                    np.zeros(
                        100
                        * messages.read_vector(messages.reply_record(reply), messages.MODEL).size
                    )
                ),
            ),
            "entries ['extra'], which a reply does not have",
        ),
        (
            lambda reply: messages.reply_record(reply).update(
                messages.WorkerSnapshot(2, 4, {"momentum": np.zeros(10**5)}).entries()
            ),
            "bytes, expected at most",
        ),
        (set_model(lambda x: np.tile(x, 100)), "bytes, expected at most"),
    ],
)
def test_a_bad_update_is_rejected_counted_and_the_run_goes_on(
    change: Callable[[Message], None], reason: str
) -> None:
    config = least_squares_config(algorithm="overlap", tau=2)
    grid = InProcessGrid(misbehaving(1, [2], tamper(change)), config.num_clients)
    assert_rejected_once(config, run(grid, config), reason)


def test_a_reply_that_claims_to_come_from_another_node_is_rejected() -> None:
    """Worker 1's node answers its own message in node 2's name: a Flower 1.41 SuperLink
    refuses such a reply (its sender must be its message's destination), and the strategy
    does not rely on that (other grids, other Flower versions)."""
    config = least_squares_config(algorithm="overlap", tau=2)
    grid = InProcessGrid(client_app, config.num_clients)
    node_of = {c.node_config["partition-id"]: n for n, c in grid.contexts.items()}

    def impersonate(reply: Message) -> None:
        reply.metadata.__dict__["_src_node_id"] = node_of[2]

    grid.client_app = misbehaving(1, [2], tamper(impersonate))
    reason = f"reply from node {node_of[2]}, the message was for node {node_of[1]}"
    assert_rejected_once(config, run(grid, config), reason)


def assert_rejected_once(config: RunConfig, result: RunResult, reason: str) -> None:
    """Worker 1's round-2 reply, and nothing else, was rejected for `reason` and counted;
    the run went on to finite models, those of the matrix rule without that reply."""
    (rejected,) = result.events
    assert (rejected["round"], rejected["worker"], rejected["kind"]) == (2, 1, "rejected")
    assert reason in rejected["reason"]
    assert [row["rejected"] for row in result.rounds] == [0, 1, 0, 0]
    assert np.all(np.isfinite(result.workers)) and np.all(np.isfinite(result.aux))
    assert np.isfinite(result.rounds[-1]["test-loss"])
    # the rejected model was mixed into nothing
    assert_matches_reference(config, result)


@pytest.mark.parametrize("algorithm", ["local-sgd", "easgd", "dpsgd"])
def test_a_rejected_nan_worker_adopts_the_survivors_mix_and_rejoins(algorithm: str) -> None:
    """The run ends exactly where the matrix rule without worker 3's round-2 update ends."""
    config = least_squares_config(algorithm=algorithm, num_clients=6)
    nan = set_model(lambda x: np.full_like(x, np.nan))
    grid = InProcessGrid(misbehaving(3, [2], tamper(nan)), config.num_clients)
    result = run(grid, config)
    assert [e["kind"] for e in result.events] == ["rejected"]
    assert_matches_reference(config, result)


def test_the_norm_bound_rejects_a_far_away_model() -> None:
    config = least_squares_config(algorithm="local-sgd", update_norm_bound=3.0)
    far = set_model(lambda x: x + 100.0)
    grid = InProcessGrid(misbehaving(0, [3], tamper(far)), config.num_clients)
    result = run(grid, config)
    (rejected,) = result.events
    assert (rejected["round"], rejected["worker"], rejected["kind"]) == (3, 0, "rejected")
    assert "update-norm-bound 3.0" in rejected["reason"]
    assert_matches_reference(config, result)


def test_a_round_that_loses_its_quorum_stops_the_run_with_every_reason() -> None:
    config = least_squares_config(algorithm="local-sgd", quorum=1.0)
    grid = InProcessGrid(misbehaving(4, [2], explode), config.num_clients)
    with pytest.raises(RunFailed) as err:
        run(grid, config)
    message = str(err.value)
    assert "round 2: 4 of 5 sampled workers answered, quorum needs 5" in message
    assert "worker 4: RuntimeError: disk full on the device" in message


def test_a_client_broken_everywhere_stops_the_run() -> None:
    """A deterministic bug on every client is not a fault to ride out."""
    config = least_squares_config(algorithm="overlap")

    def app(msg: Message, context: Context) -> Message:
        if round_of(msg) is not None:
            raise KeyError("missing-config-key")
        return client_app(msg, context)

    with pytest.raises(RunFailed, match="round 1: 0 of 5 sampled workers answered"):
        run(InProcessGrid(app, config.num_clients), config)


def test_a_worker_dead_from_round_3_ends_without_a_final_model() -> None:
    config = least_squares_config(algorithm="easgd", tau=1)
    grid = InProcessGrid(misbehaving(1, range(3, 10), explode), config.num_clients)
    result = run(grid, config)
    assert [(e["round"], e["kind"]) for e in result.events] == [
        (3, "failed"),
        (4, "failed"),
        (5, "failed"),
    ]
    assert np.all(np.isnan(result.workers[1]))
    alive = [0, 2, 3, 4]
    assert np.all(np.isfinite(result.workers[alive]))
    assert "worker-loss" in result.client_evaluation
    assert_matches_reference(config, result, alive)


def test_a_run_directory_holds_what_its_models_are_checked_against(tmp_path: Path) -> None:
    """From its files alone (as a deployed run is checked): the final models of a run whose
    worker failed twice are the matrix rule's over the workers that answered, and would
    not be without its events."""
    config = least_squares_config(algorithm="dpsgd", num_clients=6, results_dir=str(tmp_path))
    grid = InProcessGrid(misbehaving(2, [2, 3], explode), config.num_clients)
    directory = run(grid, config, results=results).directory
    assert directory is not None
    recorded_config, recorded = recorded_result(directory)
    assert [e["kind"] for e in recorded.events] == ["failed", "failed"]
    assert_matches_reference(recorded_config, recorded)
    recorded.events = []
    with pytest.raises(AssertionError):
        assert_matches_reference(recorded_config, recorded)


class BlockingPullGrid(InProcessGrid):
    """Its first pull in round `round_` blocks for `seconds` and brings nothing while every
    reply arrives, like Flower's pull stuck on the content of a reply whose node died
    mid-push."""

    def __init__(self, round_: int, seconds: float, num_nodes: int) -> None:
        super().__init__(client_app, num_nodes)
        self.round, self.seconds = round_, seconds
        self.current = 0
        self.blocked = False

    def push_messages(self, messages_: Iterable[Message]) -> Iterable[str]:
        messages_ = list(messages_)
        self.current = max([self.current, *(round_of(m) or 0 for m in messages_)])
        return super().push_messages(messages_)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        if self.current == self.round and not self.blocked:
            self.blocked = True
            for msg_id in list(self._waiting):  # every reply arrives while it blocks
                self._deliver(self._waiting.pop(msg_id))
            time.sleep(self.seconds)
            return []
        return super().pull_messages(message_ids)


def test_replies_that_arrive_while_a_pull_blocks_are_in_time() -> None:
    """The deadline is judged at the start of a pull, so a pull that blocks past it does not
    leave out the workers whose replies came meanwhile."""
    config = least_squares_config(algorithm="local-sgd", num_rounds=4, round_deadline=0.2)
    grid = BlockingPullGrid(2, seconds=0.5, num_nodes=config.num_clients)
    result = run(grid, config)
    assert grid.blocked
    assert result.events == []
    assert [row["participants"] for row in result.rounds] == [config.num_clients] * 4
    assert_matches_reference(config, result)


def test_a_late_worker_misses_rounds_and_its_late_reply_is_discarded() -> None:
    config = least_squares_config(algorithm="local-sgd", num_rounds=6, round_deadline=0.2)
    grid = SlowNodeGrid(2, slow_round=2, release_round=4, num_nodes=config.num_clients)
    result = run(grid, config)
    kinds = [(e["round"], e["kind"], e["worker"]) for e in result.events]
    # left out of round 2 at the deadline and of round 3 while still busy; its round-2
    # reply arrives while round 4 runs, is discarded, and it joins round 4 in time
    assert kinds == [(2, "deadline", 2), (3, "busy", 2), (2, "late", 2)]
    assert [row["participants"] for row in result.rounds] == [5, 4, 4, 5, 5, 5]
    assert grid.overlapping_messages == 0
    assert_matches_reference(config, result)


def test_the_final_evaluation_asks_a_seeded_sample_of_the_workers() -> None:
    """eval-workers=3 of 6: three evaluate messages, to the workers the seed picks."""
    config = least_squares_config(num_clients=6, eval_workers=3, seed=4)
    asked: list[int] = []

    def app(msg: Message, context: Context) -> Message:
        if msg.metadata.message_type == MessageType.EVALUATE:
            asked.append(int(context.node_config["partition-id"]))
        return client_app(msg, context)

    result = run(InProcessGrid(app, 6), config)
    assert sorted(asked) == participation.subset(4, list(range(6)), 3)
    assert len(asked) == 3 and "worker-loss" in result.client_evaluation
    asked.clear()
    run(InProcessGrid(app, 6), config.replace(eval_workers=0))
    assert sorted(asked) == list(range(6))


def test_a_run_that_diverges_keeps_its_settled_rounds_and_says_why_it_stopped(
    tmp_path: Path,
) -> None:
    """Every model NaN (a learning rate far too large) stops the run at its first round
    without a quorum; the rounds before it and the reason are written, not lost."""
    config = least_squares_config(algorithm="local-sgd", lr=1000.0, num_rounds=40)
    config = config.replace(results_dir=str(tmp_path))
    with pytest.raises(RunFailed, match="NaN or Inf values") as err:
        run(InProcessGrid(client_app, config.num_clients), config, results=results)
    partial = err.value.partial
    assert partial is not None and partial.directory is not None and partial.rounds
    recorded = compare.load_run(partial.directory)
    assert recorded.failed == partial.failed and "quorum needs" in recorded.failed
    assert [row["round"] for row in recorded.rows] == list(range(1, len(partial.rounds) + 1))
    assert len(recorded.rows) < config.num_rounds
