"""simulations.context_store: the in-process engines keep the worker states past their
memory budget on disk, hand back the same Context with the same state, and a run whose
states all travel through the disk ends on exactly the models of one that keeps them."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from clients.client_app import app as client_app
from simulations.context_store import ContextStore, state_bytes
from simulations.inprocess import InProcessGrid
from simulations.vectorized import VectorizedGrid
from strategies.server_app import run
from tests.conftest import assert_replayed, least_squares_config


def _context(node: int, values: int) -> Context:
    state = RecordDict()
    state["worker"] = ArrayRecord({"x": Array(np.arange(values, dtype=np.float32) + node)})
    state["meta"] = ConfigRecord({"round": node})
    return Context(run_id=1, node_id=node, node_config={}, state=state, run_config={})


def test_states_past_the_budget_wait_on_disk_least_recently_used_first() -> None:
    contexts = {node: _context(node, 1000) for node in (1, 2, 3)}
    one = state_bytes(contexts[1].state)
    store = ContextStore(dict(contexts), budget=int(1.5 * one))
    for node in (3, 1, 2):  # 3 is the least recently used
        store[node]
    store.settle()
    assert store.spilled == 2
    assert len(contexts[3].state.array_records) == 0 and len(contexts[1].state.array_records) == 0
    assert state_bytes(contexts[2].state) == one  # the most recent stays
    again = store[3]
    assert again is contexts[3]  # the same Context, its state read back exactly
    np.testing.assert_array_equal(
        again.state.array_records["worker"]["x"].numpy(), np.arange(1000, dtype=np.float32) + 3
    )
    assert again.state.config_records["meta"]["round"] == 3
    assert store.spilled == 1
    assert sorted(store) == [1, 2, 3] and len(store) == 3 and 2 in store and 4 not in store


def test_without_a_budget_nothing_leaves_memory() -> None:
    contexts = {node: _context(node, 1000) for node in (1, 2)}
    store = ContextStore(dict(contexts), budget=None)
    store[1], store[2]
    store.settle()
    assert store.spilled == 0
    assert all(state_bytes(c.state) for c in contexts.values())


@pytest.mark.cross_path
@pytest.mark.parametrize("grid_class", [InProcessGrid, VectorizedGrid])
@pytest.mark.parametrize(
    "changes",
    [
        dict(algorithm="overlap", momentum=0.9, nesterov=True),
        dict(algorithm="cocod", participation=0.5),
        dict(algorithm="overlap", momentum=0.9, eager_reply=True),
        dict(algorithm="overlap", momentum=0.9, eager_reply=True, background=True),
    ],
    ids=["overlap", "cocod-partial", "overlap-eager", "overlap-eager-background"],
)
def test_a_run_whose_states_all_go_through_the_disk_ends_on_the_same_models(
    grid_class: type[InProcessGrid], changes: dict
) -> None:
    """A budget of one byte: every state is written out at every pull and read back with
    its node's next message (momentum, CoCoD snapshots, eager rounds in flight, also while
    their steps run in the background, which write the state with the next message)."""
    changes = dict(changes)  # (the parameter is shared by both grids' cases)
    node_config = {"background-steps": bool(changes.pop("background", False))}
    config = least_squares_config(num_rounds=5, **changes)

    def make(budget: int | None) -> InProcessGrid:
        return grid_class(
            client_app, config.num_clients, state_budget=budget, node_config=node_config
        )

    kept = run(make(None), config)
    grid = make(1)
    spilled = run(grid, config)
    assert grid.contexts.writes >= config.num_clients * config.num_rounds // 2
    assert_replayed(spilled.workers, kept.workers)
    assert_replayed(spilled.aux, kept.aux)
    assert [r["train-loss"] for r in spilled.rounds] == [r["train-loss"] for r in kept.rounds]
