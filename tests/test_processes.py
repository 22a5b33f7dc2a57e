"""The in-process engines with worker processes (`simulations.processes`): the same models as
one process, the same faults handled, checkpoints resumed, and bad counts refused."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message

from clients.client_app import app as client_app
from clients.client_app import train_many
from fedcoop import checkpoint
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError
from simulations import results
from simulations.inprocess import InProcessGrid
from simulations.runner import GRIDS, run_config
from simulations.vectorized import VectorizedGrid
from strategies.result import RunResult
from strategies.server_app import run
from tests.conftest import (
    assert_paths_agree,
    image_overlap_config,
    least_squares_config,
    run_in_process,
)
from tests.test_checkpoint import Crash, Crashes, assert_same_rows

pytestmark = pytest.mark.flower


def _on(engine: str, config: RunConfig, processes: int, **options: object) -> RunResult:
    grid = GRIDS[engine](client_app, config.num_clients, seed=3, processes=processes, **options)
    try:
        return run(grid, config, results=results)
    finally:
        grid.close()


@pytest.mark.cross_path
@pytest.mark.parametrize("engine", ["inprocess", "vectorized"])
@pytest.mark.parametrize(
    "changes",
    [
        {"algorithm": "overlap"},
        {"algorithm": "fedavg", "participation": 0.5, "partition": "dirichlet"},
        {"algorithm": "scaffold"},
    ],
    ids=["overlap", "fedavg-sampled", "scaffold"],
)
def test_worker_processes_reach_the_one_process_models(engine: str, changes: dict) -> None:
    """Each process runs the same local rule on its share of the cohort, with the same
    seeded batches: the models and round rows are the one-process run's (float tolerance:
    a process batches fewer workers per vmap)."""
    config = replace(image_overlap_config("cnn"), num_clients=6, batch_size=8, **changes)
    one, _ = run_in_process(config, engine=engine)
    many = _on(engine, config, processes=2)
    assert one.workers is not None and many.workers is not None
    assert_paths_agree(many.workers, one.workers)
    for a, b in zip(many.rounds, one.rounds, strict=True):
        for key in ("train-loss", "test-loss", "test-accuracy", "participants", "bytes-up"):
            assert_paths_agree(float(a[key]), float(b[key]), rtol=1e-4)


def _failing(batch: Sequence[tuple[Message, Context]]) -> list[Message | Exception]:
    """train_many, except that partition 1's ClientApp raises (in whichever process)."""
    replies = train_many(batch)
    return [
        OSError(f"disk full in process {os.getpid()}")
        if int(context.node_config["partition-id"]) == 1
        else reply
        for (_, context), reply in zip(batch, replies, strict=True)
    ]


def test_a_worker_that_fails_in_a_process_is_left_out_as_in_one_process() -> None:
    config = least_squares_config(algorithm="local-sgd", quorum=0.5)
    one = run(VectorizedGrid(client_app, config.num_clients, train=_failing), config)
    grid = VectorizedGrid(client_app, config.num_clients, train=_failing, processes=2)
    many = run(grid, config)
    grid.close()
    assert {e["worker"] for e in many.events if e["kind"] == "failed"} == {1}
    assert any("disk full in process" in e["reason"] for e in many.events)
    assert [r["participants"] for r in many.rounds] == [r["participants"] for r in one.rounds]
    assert one.workers is not None and many.workers is not None
    alive = np.isfinite(one.workers).all(axis=1)  # the failing worker never reports a model
    assert list(np.isfinite(many.workers).all(axis=1)) == list(alive) and alive.sum() == 4
    assert_paths_agree(many.workers[alive], one.workers[alive])


class CrashingProcesses(Crashes, VectorizedGrid):
    def __init__(self, num_nodes: int, at: int) -> None:
        super().__init__(client_app, num_nodes, seed=5, processes=2)
        self.at = at


def test_a_crashed_run_with_worker_processes_resumes_to_the_uninterrupted_result(
    tmp_path: Path,
) -> None:
    """The checkpoint's worker states are the parent's Contexts, which every process's
    reply brings up to date."""
    config = least_squares_config(algorithm="overlap", num_rounds=6, momentum=0.9)
    whole = _on("vectorized", config, processes=2)
    crashing = config.replace(results_dir=str(tmp_path))
    with pytest.raises(Crash):
        run(CrashingProcesses(config.num_clients, at=5), crashing, results=results)
    (directory,) = tmp_path.iterdir()
    assert checkpoint.read(directory)["round"] in (3, 4)
    resumed = _on("vectorized", crashing.replace(resume=str(directory)), processes=2)
    assert_paths_agree(resumed.workers, whole.workers)
    assert_same_rows(resumed.rounds, whole.rounds)


@pytest.mark.parametrize("count", [0, -1, 1.5, True])
def test_a_process_count_below_one_or_not_whole_is_refused(count: object) -> None:
    with pytest.raises(ConfigError) as caught:
        run_config(least_squares_config(), engine="vectorized", processes=count)  # type: ignore[arg-type]
    assert caught.value.parameter == "processes"


def test_the_simulation_engine_and_background_steps_take_one_process() -> None:
    with pytest.raises(ConfigError, match="Ray"):
        run_config(least_squares_config(), engine="simulation", processes=2)
    with pytest.raises(ConfigError, match="background-steps"):
        InProcessGrid(client_app, 2, processes=2, node_config={"background-steps": True})
