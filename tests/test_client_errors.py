"""What happens when workers fail, misbehave or get the wrong message, through the real
ClientApp on InProcessGrid; and what a worker keeps in its context.state between rounds."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, cast

import numpy as np
import pytest
import torch
from flwr.app import Context, Message
from flwr.proto.task_pb2 import Task
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from clients import messages, worker_state
from clients.client_app import app as client_app
from clients.worker_state import STATE_ARRAYS, STATE_META
from fedcoop.errors import RunFailed
from fedcoop.optimizers import LocalOptimizer, sgd
from fedcoop.spec import reference_trajectory
from simulations.inprocess import InProcessGrid
from strategies import loop, rounds, transport
from strategies.server_app import run
from tests.conftest import (
    gradient_oracle,
    least_squares_config,
    round_of,
    run_in_process,
    train_message,
    x0_of,
)

pytestmark = pytest.mark.flower

# --- too few nodes -----------------------------------------------------------------------


def test_too_few_nodes_fail_fast_with_the_num_supernodes_hint() -> None:
    config = least_squares_config(num_clients=5, round_timeout=0.5)
    grid = InProcessGrid(client_app, 3)
    started = time.monotonic()
    with pytest.raises(RunFailed) as err:
        run(grid, config)
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "num-supernodes=5" in message
    assert "only 3 of num-clients=5" in message


class SkippedWaits:
    """Stands in for the strategy's clock: `sleep` returns at once and `monotonic` moves on
    by what it would have slept, so a wait of minutes takes milliseconds."""

    def __init__(self) -> None:
        self.skipped = 0.0
        self._monotonic = time.monotonic

    def sleep(self, seconds: float) -> None:
        self.skipped += seconds

    def monotonic(self) -> float:
        return self._monotonic() + self.skipped


@pytest.fixture
def skipped_waits(monkeypatch: pytest.MonkeyPatch) -> SkippedWaits:
    waits = SkippedWaits()
    for module in (transport, loop, rounds):  # the strategy's parts that wait or time
        monkeypatch.setattr(module, "time", waits)
    return waits


def simulated_grid(num_supernodes: int) -> InMemoryGrid:
    """Flower's simulation Grid over `num_supernodes` nodes, set up as its engine sets it up
    (flwr.simulation.run_simulation), without Ray or ClientApps behind the nodes."""
    factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    simulation = Run.create_empty(run_id=1)
    simulation.federation_id, simulation.primary_task_id = NOOP_FEDERATION_ID, 1
    state = cast(InMemoryLinkState, factory.state())
    state.run_ids[simulation.run_id] = RunRecord(run=simulation)
    state.task_store[simulation.primary_task_id] = Task(task_id=1, run_id=simulation.run_id)
    _register_nodes(num_supernodes, factory)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(simulation)
    return grid


def test_a_simulation_short_of_nodes_fails_at_once_naming_num_supernodes(
    skipped_waits: SkippedWaits,
) -> None:
    """`flwr run .` without --federation-config simulates 2 nodes, and never more."""
    config = least_squares_config(num_clients=5)  # round-timeout 600 s
    with pytest.raises(RunFailed) as err:
        run(simulated_grid(2), config)
    assert skipped_waits.skipped < 15
    assert str(err.value) == (
        "the simulation has 2 SuperNodes but num-clients=5: "
        'pass --federation-config "num-supernodes=5" to flwr run'
    )


def test_a_simulation_with_all_its_nodes_starts_without_waiting(
    skipped_waits: SkippedWaits,
) -> None:
    config = least_squares_config(num_clients=5)
    grid = simulated_grid(5)
    waiting = transport.GridTransport(grid, config, pull_interval=0.01)
    assert waiting.await_nodes() == sorted(grid.get_node_ids())
    assert skipped_waits.skipped == 0


class LateNodes(InProcessGrid):
    """A deployment whose SuperNodes connect one by one, a node every `every` seconds."""

    def __init__(self, num_nodes: int, every: float, clock: SkippedWaits) -> None:
        super().__init__(client_app, num_nodes)
        self.every, self.clock, self._start = every, clock, clock.monotonic()

    def get_node_ids(self) -> Iterable[int]:
        connected = int((self.clock.monotonic() - self._start) // self.every) + 1
        return list(self.contexts)[:connected]


def test_a_deployment_waits_for_supernodes_that_join_later(skipped_waits: SkippedWaits) -> None:
    """Real SuperNodes may start after the run: the server waits for them up to
    round-timeout, far past the simulation's grace, and the run then completes."""
    config = least_squares_config(num_clients=4, num_rounds=2, round_timeout=60)
    grid = LateNodes(config.num_clients, every=15, clock=skipped_waits)
    result = run(grid, config)
    assert skipped_waits.skipped >= 45  # the fourth node came at 45 s
    assert len(result.rounds) == 2 and set(result.node_of_worker) == set(grid.contexts)
    with pytest.raises(RunFailed, match=r"after 30.0s only 2 of num-clients=4"):
        run(LateNodes(4, every=25, clock=skipped_waits), config.replace(round_timeout=30.0))


# --- a message for the wrong round ------------------------------------------------------


def test_the_same_round_twice_is_refused_with_the_last_round() -> None:
    config = least_squares_config()
    grid = InProcessGrid(client_app, config.num_clients)
    node, context = next(iter(grid.contexts.items()))
    x0 = x0_of(config)
    reply = client_app(train_message(config, node, 1, x0), context)
    assert not reply.has_error()
    before = context.state.array_records[STATE_ARRAYS][messages.MODEL].numpy().copy()
    with pytest.raises(ValueError, match="round 1 sent to a worker whose last round was 1"):
        client_app(train_message(config, node, 1, x0), context)
    # the refused message left the worker's state alone
    after = context.state.array_records[STATE_ARRAYS][messages.MODEL].numpy()
    np.testing.assert_array_equal(before, after)
    assert context.state.config_records[STATE_META]["round"] == 1


def test_a_first_message_without_a_model_is_refused() -> None:
    """A worker may join in any round (partial participation), but never without a model."""
    config = least_squares_config()
    grid = InProcessGrid(client_app, config.num_clients)
    node, context = next(iter(grid.contexts.items()))
    with pytest.raises(ValueError, match="round 3 is this worker's first and carries no model"):
        client_app(train_message(config, node, 3, x0_of(config)), context)
    assert STATE_META not in context.state.config_records


def test_a_wrong_round_through_the_grid_comes_back_as_an_error_reply() -> None:
    config = least_squares_config()
    grid = InProcessGrid(client_app, config.num_clients)
    node = next(iter(grid.contexts))
    (reply,) = grid.send_and_receive([train_message(config, node, 2, x0_of(config))])
    assert reply.has_error()
    assert "round 2 is this worker's first and carries no model" in reply.error.reason


# --- what a worker keeps between rounds -------------------------------------------------


@pytest.mark.parametrize("algorithm", ["local-sgd", "overlap"])
def test_each_node_keeps_its_model_and_round_in_its_state(algorithm: str) -> None:
    config = least_squares_config(algorithm=algorithm, num_rounds=3, tau=2)
    result, grid = run_in_process(config)
    assert result.workers is not None
    for worker, node in enumerate(result.node_of_worker):
        state = grid.contexts[node].state
        assert grid.contexts[node].node_config["partition-id"] == worker
        assert state.config_records[STATE_META]["round"] == 4  # 3 rounds + the final sync
        arrays = state.array_records[STATE_ARRAYS]
        np.testing.assert_array_equal(arrays[messages.MODEL].numpy(), result.workers[worker])
        assert "momentum" not in arrays  # no momentum configured, none kept
        assert "pending" not in arrays  # mix-after-step holds no gradient back
        assert "snapshot" not in arrays  # only CoCoD-SGD's correction reads one
    assert grid.overlapping_messages == 0


def test_momentum_buffers_persist_across_rounds() -> None:
    """The stored heavy-ball buffer equals the one of the matrix rule after the last step."""
    config = least_squares_config(algorithm="local-sgd", num_rounds=3, tau=3, momentum=0.9)
    result, grid = run_in_process(config)
    grad = gradient_oracle(config)
    mu, eta, k = config.momentum, config.lr, 3 * 3
    ref = reference_trajectory(result.spec, x0_of(config), grad, eta, k, optimizer=sgd(mu))
    # ref[j] is X_{j+1}; step K-1 is a plain step: buf_{K-1} = (X_{K-1} - X_K) / eta.
    for worker, node in enumerate(result.node_of_worker):
        arrays = grid.contexts[node].state.array_records[STATE_ARRAYS]
        assert "momentum" in arrays
        buffer = arrays["momentum"].numpy()
        before_last = (ref[k - 2][:, worker] - ref[k - 1][:, worker]) / eta
        expected = mu * before_last + grad(worker, ref[k - 1][:, worker], k)
        assert np.linalg.norm(expected) > 1e-3
        np.testing.assert_allclose(buffer, expected, rtol=0, atol=1e-6)


@dataclass(frozen=True)
class GradientSum:
    """A transform that keeps state under a name of its own and leaves the direction alone."""

    state_names: ClassVar[tuple[str, ...]] = ("gradient-sum",)

    def __call__(self, g: torch.Tensor, state: Mapping[str, torch.Tensor]) -> tuple:
        return g, {"gradient-sum": state["gradient-sum"] + g}


def test_any_optimizer_state_is_kept_and_read_back_by_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The state file holds every array the optimizer declares, and a worker rebuilt from it
    (a new process) holds them again; the run equals plain SGD, as the direction is g."""
    config = least_squares_config(algorithm="local-sgd", num_rounds=2, tau=2)
    plain, _ = run_in_process(config)
    monkeypatch.setattr(
        worker_state.algorithms,
        "local_optimizer",
        lambda _config: LocalOptimizer(transforms=(GradientSum(),)),
    )
    worker_state.rule_for.cache_clear()
    try:
        result, grid = run_in_process(config)
        for node in result.node_of_worker:
            context = grid.contexts[node]
            kept = context.state.array_records[STATE_ARRAYS]["gradient-sum"].numpy()
            assert np.linalg.norm(kept) > 1e-3
            rebuilt = worker_state.build_worker(config, context, context.state)
            assert set(rebuilt.opt_state) == {"gradient-sum"}
            np.testing.assert_array_equal(rebuilt.opt_state["gradient-sum"].cpu().numpy(), kept)
    finally:
        worker_state.rule_for.cache_clear()
    assert result.workers is not None and plain.workers is not None
    np.testing.assert_array_equal(result.workers, plain.workers)


def test_remark_1_keeps_the_pending_gradient_until_the_next_sync() -> None:
    config = least_squares_config(algorithm="easgd", num_rounds=2, tau=2)
    pending_after: dict[tuple[int, int], bool] = {}

    def watch(msg: Message, context: Context) -> Message:
        reply = client_app(msg, context)
        if round_of(msg) is not None:
            arrays = context.state.array_records[STATE_ARRAYS]
            pending_after[context.node_config["partition-id"], round_of(msg)] = "pending" in arrays
        return reply

    grid = InProcessGrid(watch, config.num_clients)
    run(grid, config)
    # held back after each round's last gradient; applied (and dropped) by the final sync
    for worker in range(config.num_clients):
        assert pending_after[worker, 1] and pending_after[worker, 2]
        assert not pending_after[worker, 3]
