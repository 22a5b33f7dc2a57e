"""Eager replies (`eager-reply`): each message's reply carries the round its worker ran since
the previous message, and the new round's local steps run after the reply, in a background
thread where the ClientApp process outlives messages (node config `background-steps`).

The schedule changes when models travel, not what is computed: every run here ends with
exactly the models of the plain schedule (which test_equivalence ties to the matrix rule),
and a worker that fails, answers late or sends an unusable model ends where the matrix rule
over the workers that answered ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict

from clients import client_app as client_module
from clients import messages, worker_state
from clients.client_app import app as client_app
from fedcoop import workload
from fedcoop.errors import ConfigError
from fedcoop.local_rule import LocalRule, WorkerState
from simulations.inprocess import InProcessGrid
from strategies.server_app import run
from tests.conftest import (
    SlowNodeGrid,
    assert_matches_reference,
    assert_replayed,
    explode,
    least_squares_config,
    misbehaving,
    set_model,
    train_message,
    x0_of,
)

pytestmark = pytest.mark.flower

CASES = {
    "overlap": dict(algorithm="overlap", tau=2),
    "overlap-momentum": dict(algorithm="overlap", tau=1, momentum=0.9, nesterov=True),
    "easgd": dict(algorithm="easgd", tau=1),
    "eamsgd": dict(algorithm="eamsgd", tau=2),
    "hierarchical": dict(algorithm="hierarchical", tau=2, num_clients=6, groups=2),
    "cocod": dict(algorithm="cocod", tau=2),
}


def background_grid(app: object, num_nodes: int, background: bool = True) -> InProcessGrid:
    return InProcessGrid(app, num_nodes, node_config={"background-steps": background})


@pytest.fixture(autouse=True)
def _no_background_left() -> Iterator[None]:
    yield
    assert not client_module.BACKGROUND.jobs, "background steps nobody collected"


@pytest.mark.cross_path
@pytest.mark.parametrize("background", [False, True], ids=["inline", "background"])
@pytest.mark.parametrize("case", list(CASES))
def test_eager_replies_end_with_the_plain_schedules_models(case: str, background: bool) -> None:
    plain = least_squares_config(**CASES[case], num_rounds=5)
    want = run(InProcessGrid(client_app, plain.num_clients), plain)
    grid = background_grid(client_app, plain.num_clients, background)
    got = run(grid, plain.replace(eager_reply=True))
    assert_replayed(got.workers, want.workers)
    assert_replayed(got.aux, want.aux)
    # (the mean over workers adds them in the order their replies came)
    want_losses = [r["train-loss"] for r in want.rounds]
    assert [r["train-loss"] for r in got.rounds] == pytest.approx(want_losses, rel=1e-12)
    assert [r["participants"] for r in got.rounds] == [plain.num_clients] * 5
    assert got.events == [] and grid.overlapping_messages == 0
    # the devices' seconds of local steps, measured where they ran
    assert all(0 < r["compute-time"] < r["wall-time"] for r in got.rounds)


# -- the ClientApp's side of the protocol -----------------------------------------------------
def eager_message(node: int, round_: int, collect: int, x0: np.ndarray) -> Message:
    config = least_squares_config(eager_reply=True)
    return train_message(config, node, round_, x0, collect=collect)


def reported(reply: Message) -> tuple[int, np.ndarray] | None:
    """(round, model) a reply reports, or None."""
    record = messages.reply_record(reply)
    if record is None:
        return None
    return int(record["round"]), messages.read_vector(record, messages.MODEL)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """(started, go): local steps signal `started`, then wait for `go`."""
    started, go = threading.Event(), threading.Event()
    steps = LocalRule.run

    def gated(self: LocalRule, *args: object) -> list[float]:
        started.set()
        assert go.wait(30), "the test never let the steps go on"
        return steps(self, *args)

    monkeypatch.setattr(LocalRule, "run", gated)
    yield started, go
    go.set()


def test_the_reply_leaves_before_the_steps_and_the_next_one_carries_them(
    gate: tuple[threading.Event, threading.Event],
) -> None:
    started, go = gate
    config = least_squares_config()
    x0 = x0_of(config)
    # what a plain worker answers to round 1
    plain = InProcessGrid(client_app, config.num_clients)
    node, context = next(iter(plain.contexts.items()))
    go.set()
    want = reported(client_app(train_message(config, node, 1, x0), context))
    assert want is not None and want[0] == 1
    go.clear()
    started.clear()

    grid = background_grid(client_app, config.num_clients)
    node, context = next(iter(grid.contexts.items()))
    # round 1 is answered while its steps are held: they run after the reply
    assert reported(client_app(eager_message(node, 1, 0, x0), context)) is None
    assert started.wait(30)
    go.set()
    got = reported(client_app(eager_message(node, 2, 1, x0), context))
    assert got is not None and got[0] == 1
    assert_replayed(got[1], want[1])
    # the final message only collects round 2
    config = least_squares_config(eager_reply=True)
    only = train_message(config, node, 2, x0, collect=2, round=None, local_steps=0, sync=None)
    assert reported(client_app(only, context))[0] == 2


def test_steps_that_fail_in_the_background_fail_the_message_that_collects_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = least_squares_config()
    grid = background_grid(client_app, config.num_clients)
    node, context = next(iter(grid.contexts.items()))
    x0 = x0_of(config)
    client_app(eager_message(node, 1, 0, x0), context)
    client_module.BACKGROUND.jobs[context.run_id, context.node_id].outcome.result()  # round 1 ran

    def broken(self: LocalRule, *args: object) -> list[float]:
        raise RuntimeError("out of memory on the device")

    monkeypatch.setattr(LocalRule, "run", broken)
    assert reported(client_app(eager_message(node, 2, 1, x0), context))[0] == 1
    with pytest.raises(RuntimeError, match=r"(?s)round 2 failed.*out of memory on the device"):
        client_app(eager_message(node, 3, 2, x0), context)


def test_steps_lost_with_the_process_are_a_clear_error() -> None:
    config = least_squares_config()
    grid = background_grid(client_app, config.num_clients)
    node, context = next(iter(grid.contexts.items()))
    x0 = x0_of(config)
    client_app(eager_message(node, 1, 0, x0), context)
    client_module.BACKGROUND.jobs.pop((context.run_id, context.node_id)).outcome.result()
    with pytest.raises(ValueError, match="holds round 0: its local steps of that round were lost"):
        client_app(eager_message(node, 2, 1, x0), context)


# -- faults under eager replies ---------------------------------------------------------------
def test_a_failed_exchange_loses_the_collected_round_and_the_next_is_sent_again() -> None:
    """The message that starts round 3 (and collects round 2) fails twice: worker 1 misses
    round 2, its round 3 is sent again adopting sync 2, fails again, and it rejoins in 4."""
    config = least_squares_config(algorithm="overlap", tau=2, num_rounds=6, eager_reply=True)
    grid = background_grid(misbehaving(1, [3], explode), config.num_clients)
    result = run(grid, config)
    assert [(e["round"], e["worker"], e["kind"]) for e in result.events] == [
        (2, 1, "failed"),
        (3, 1, "failed"),
    ]
    assert [r["participants"] for r in result.rounds] == [5, 4, 4, 5, 5, 5]
    assert_matches_reference(config, result)


def test_steps_that_fail_in_the_background_leave_their_worker_out_of_that_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = least_squares_config(algorithm="easgd", tau=2, num_rounds=5, eager_reply=True)
    victim = workload.shard(config, 3, config.num_clients)
    steps = LocalRule.run

    def fails_once(self: LocalRule, workers: list[WorkerState], *args: object) -> list[float]:
        for w in workers:
            if torch.equal(w.data.y, victim.y) and w.steps_done == 2 * config.tau:
                raise RuntimeError("the device overheated")
        return steps(self, workers, *args)

    monkeypatch.setattr(LocalRule, "run", fails_once)
    result = run(background_grid(client_app, config.num_clients), config)
    ((round_, worker, kind, reason),) = [
        (e["round"], e["worker"], e["kind"], e["reason"]) for e in result.events
    ]
    assert (round_, worker, kind) == (3, 3, "failed") and "the device overheated" in reason
    assert_matches_reference(config, result)


def test_a_late_eager_worker_is_left_out_and_rejoins_adopting() -> None:
    config = least_squares_config(
        algorithm="overlap", num_rounds=6, round_deadline=0.2, eager_reply=True
    )
    grid = SlowNodeGrid(2, slow_round=3, release_round=5, num_nodes=config.num_clients)
    result = run(grid, config)
    kinds = [(e["round"], e["kind"], e["worker"]) for e in result.events]
    # the message that starts round 3 collects round 2: that round is the one missed
    assert kinds[0] == (2, "deadline", 2) and (2, "late", 2) in kinds
    assert {worker for _, _, worker in kinds} == {2}
    assert result.rounds[-1]["participants"] == config.num_clients
    assert grid.overlapping_messages == 0
    assert_matches_reference(config, result)


def test_a_rejected_eager_report_is_reset_and_the_worker_rejoins() -> None:
    config = least_squares_config(algorithm="overlap", num_rounds=6, eager_reply=True)
    nan = set_model(lambda x: np.full_like(x, np.nan))

    def nan_report(msg: Message, context: Context) -> Message:
        """The reply to the message that starts round 3 reports round 2: NaN it (round 3,
        sent again adopting, reports nothing)."""
        reply = client_app(msg, context)
        if reported(reply) is not None:
            nan(reply)
        return reply

    grid = background_grid(misbehaving(4, [3], nan_report), config.num_clients)
    result = run(grid, config)
    assert [(e["round"], e["worker"], e["kind"]) for e in result.events] == [(2, 4, "rejected")]
    assert np.all(np.isfinite(result.workers))
    assert_matches_reference(config, result)


# -- what eager replies need ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "needs"),
    [
        (dict(algorithm="local-sgd"), "reads only themselves and auxiliary nodes"),
        (dict(algorithm="dpsgd"), "workers \\[0, 1, 2, 3, 4\\] read other workers"),
        (dict(algorithm="overlap", participation=0.6), "needs participation = 1"),
        (dict(algorithm="overlap", update_norm_bound=3.0), "needs update-norm-bound = 0"),
    ],
)
def test_eager_replies_refuse_what_they_cannot_do(changes: dict, needs: str) -> None:
    config = least_squares_config(**changes, eager_reply=True)
    with pytest.raises(ConfigError, match=f"eager-reply.*{needs}"):
        run(InProcessGrid(client_app, config.num_clients), config)


def test_background_steps_nobody_collects_are_forgotten_beyond_a_bound() -> None:
    """Runs that end without a last message leave their steps behind: the process keeps
    at most worker_state.MAX_LIVE of them, forgetting the oldest."""
    config = least_squares_config()
    x0 = x0_of(config)
    node_config = {"partition-id": 0, "num-partitions": config.num_clients}
    runs = worker_state.MAX_LIVE + 2
    for run_id in range(1, runs + 1):
        context = Context(
            run_id=run_id,
            node_id=7,
            node_config={**node_config, "background-steps": True},
            state=RecordDict(),
            run_config={},
        )
        client_app(eager_message(7, 1, 0, x0), context)
    left = client_module.BACKGROUND.jobs
    try:
        assert [run_id for run_id, _ in left] == list(range(3, runs + 1))
    finally:
        for job in left.values():
            job.outcome.result()
        left.clear()
