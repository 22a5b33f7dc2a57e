"""What happens when workers fail, misbehave or get the wrong message, through the real
ClientApp on InProcessGrid; and what a worker keeps in its context.state between rounds."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Context, Message

from clients import messages
from clients.client_app import STATE_ARRAYS, STATE_META
from clients.client_app import app as client_app
from fedcoop.cooperative import reference_trajectory
from simulations.inprocess import InProcessGrid
from strategies.cooperative import RunFailed
from strategies.server_app import run
from tests.conftest import (
    gradient_oracle,
    least_squares_config,
    round_of,
    run_in_process,
    train_message,
    x0_of,
)

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
    ref = reference_trajectory(result.spec, x0_of(config), grad, eta, k, momentum=mu)
    # ref[j] is X_{j+1}; step K-1 is a plain step: buf_{K-1} = (X_{K-1} - X_K) / eta.
    for worker, node in enumerate(result.node_of_worker):
        arrays = grid.contexts[node].state.array_records[STATE_ARRAYS]
        assert "momentum" in arrays
        buffer = arrays["momentum"].numpy()
        before_last = (ref[k - 2][:, worker] - ref[k - 1][:, worker]) / eta
        expected = mu * before_last + grad(worker, ref[k - 1][:, worker], k)
        assert np.linalg.norm(expected) > 1e-3
        np.testing.assert_allclose(buffer, expected, rtol=0, atol=1e-6)


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
