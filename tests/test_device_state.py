"""A SuperNode that restarts mid-run resumes from the worker state it keeps on the device.

The ClientApp writes its worker to <state-dir>/<run-id>-partition-<i>.npz after every round
when the node config has `state-dir`; a restart is emulated in-process by emptying the
node's context.state and the process's live workers, which is what a new SuperNode and
ClientApp process start with.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Context, Message, RecordDict

from clients import worker_state
from clients.client_app import app as client_app
from clients.worker_state import STATE_ARRAYS, STATE_META
from fedcoop.config import RunConfig
from simulations.inprocess import InProcessGrid
from strategies.result import RunResult
from strategies.server_app import run
from tests.conftest import assert_replayed, least_squares_config, round_of

RESTARTED = 1
AT_ROUND = 3


def config() -> RunConfig:
    return least_squares_config(
        algorithm="overlap", num_clients=3, num_rounds=5, tau=2, momentum=0.9
    )


def restarting(partition: int, round_: int) -> Callable[[Message, Context], Message]:
    """The real ClientApp, but `partition`'s process restarts just before round `round_`."""

    def app(msg: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == partition and round_of(msg) == round_:
            context.state = RecordDict()
            worker_state.LIVE.clear()
        return client_app(msg, context)

    return app


def run_on(grid: InProcessGrid, state_dir: Path | None) -> RunResult:
    if state_dir is not None:
        for context in grid.contexts.values():
            context.node_config["state-dir"] = str(state_dir)
    return run(grid, config())


def test_each_node_writes_its_state_after_every_round(tmp_path: Path) -> None:
    grid = InProcessGrid(client_app, 3)
    run_on(grid, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"1-partition-{i}.npz" for i in range(3)
    ]  # one file per node and run, no temporary files left
    for context in grid.contexts.values():
        with np.load(tmp_path / f"1-partition-{context.node_config['partition-id']}.npz") as f:
            state = context.state
            assert list(f["meta"]) == [state[STATE_META]["round"], state[STATE_META]["steps"]]
            arrays = state.array_records[STATE_ARRAYS]
            assert sorted(k for k in f.files if k != "meta") == sorted(arrays)
            for key, array in arrays.items():
                np.testing.assert_array_equal(f[key], array.numpy())


def test_a_restarted_node_resumes_from_its_state_file(tmp_path: Path) -> None:
    uninterrupted = run_on(InProcessGrid(client_app, 3), tmp_path / "a")
    restarted = run_on(InProcessGrid(restarting(RESTARTED, AT_ROUND), 3), tmp_path / "b")
    assert restarted.events == []
    assert restarted.workers is not None and uninterrupted.workers is not None
    assert_replayed(restarted.workers, uninterrupted.workers)


def test_without_a_state_dir_a_restarted_node_fails_its_round_and_rejoins(
    tmp_path: Path,
) -> None:
    result = run_on(InProcessGrid(restarting(RESTARTED, AT_ROUND), 3), None)
    assert [(e["round"], e["worker"], e["kind"]) for e in result.events] == [
        (AT_ROUND, RESTARTED, "failed")
    ]
    assert "carries no model" in result.events[0]["reason"]
    assert [row["participants"] for row in result.rounds] == [3, 3, 2, 3, 3]
    assert result.workers is not None and np.all(np.isfinite(result.workers))
