"""Checkpoint and resume: a run killed at any point continues to the same models and metrics.

The in-process tests crash the server between rounds and resume on a fresh grid (new node
ids, new client processes' worth of state); the kill test (slow suite) SIGKILLs a `fedcoop run`
process mid-run and resumes its run directory from the command line. Either way the final models
and every per-round metric but wall time equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message

from clients.client_app import app as client_app
from fedcoop import checkpoint
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError
from simulations import results
from simulations.inprocess import InProcessGrid
from simulations.vectorized import VectorizedGrid
from strategies import server_app
from strategies.result import RunResult
from tests.conftest import (
    TIMINGS,
    assert_matches_reference,
    assert_replayed,
    least_squares_config,
    round_of,
)

REPO = Path(__file__).resolve().parents[1]


def run(grid: InProcessGrid, config: RunConfig) -> RunResult:
    """The server's run with the project's results files, as `fedcoop run` calls it."""
    return server_app.run(grid, config, results=results)


class Crash(Exception):
    """The server process dying, as far as the run can tell."""


class Crashes(InProcessGrid):
    """A grid that dies the moment the server tries to start round `at`."""

    at: int

    def push_messages(self, out: Iterable[Message]) -> Iterable[str]:
        out = list(out)
        if any((round_of(msg) or 0) >= self.at for msg in out):
            raise Crash
        return super().push_messages(out)


class CrashingGrid(Crashes):
    def __init__(self, num_nodes: int, at: int) -> None:
        super().__init__(client_app, num_nodes, seed=5)
        self.at = at


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """Every metric of every round equal, except the measured times."""
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        assert {k: v for k, v in a.items() if k not in TIMINGS} == pytest.approx(
            {k: v for k, v in b.items() if k not in TIMINGS}, abs=1e-6
        )


def assert_same_run(a: RunResult, b: RunResult) -> None:
    """A resume replays the rest of the run: the same models bit for bit; its per-round
    means may add the workers' figures in another order (the order their replies came)."""
    assert_replayed(b.workers, a.workers)
    assert_replayed(b.aux, a.aux)
    assert_same_rows(b.rounds, a.rounds)
    # node ids differ after a resume on fresh nodes; what happened to which worker does not,
    # and the resume is itself an event
    faults = [(e["round"], e.get("worker"), e["kind"]) for e in b.events if e["kind"] != "resumed"]
    assert faults == [(e["round"], e.get("worker"), e["kind"]) for e in a.events]
    (resumed,) = [e for e in b.events if e["kind"] == "resumed"]
    assert b.events.index(resumed) == sum(e["round"] <= resumed["round"] for e in a.events)


@pytest.mark.parametrize(
    "changes",
    [
        dict(algorithm="local-sgd", momentum=0.9),
        dict(algorithm="overlap", momentum=0.9, nesterov=True),
        dict(algorithm="easgd", tau=1),
        dict(algorithm="dpsgd", participation=0.6, checkpoint_every=2),
        dict(algorithm="cocod"),
        dict(algorithm="overlap", momentum=0.9, eager_reply=True),
        dict(algorithm="overlap", tau_schedule="adacomm", adacomm_interval=0.25),
        dict(algorithm="dpsgd", tau_schedule="3,1,2"),
        dict(algorithm="matcha", participation=0.6, comm_budget=0.5),
    ],
    ids=[
        "local-sgd",
        "overlap",
        "easgd",
        "dpsgd-partial",
        "cocod",
        "overlap-eager",
        "overlap-adacomm",
        "dpsgd-tau-list",
        "matcha-partial",
    ],
)
def test_a_crashed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, changes: dict) -> None:
    config = least_squares_config(num_rounds=6, **changes)
    whole = run(InProcessGrid(client_app, config.num_clients), config)
    crashing = config.replace(results_dir=str(tmp_path))
    with pytest.raises(Crash):
        run(CrashingGrid(config.num_clients, at=5), crashing)
    (directory,) = tmp_path.iterdir()
    saved = checkpoint.read(directory)
    # round 5 may start before round 4 settles (overlap; eager replies: always): then
    # round 3 is the last cut
    assert saved["round"] in (3, 4) and len(saved["rounds"]) == saved["round"]
    resumed = run(
        InProcessGrid(client_app, config.num_clients, seed=9),
        crashing.replace(resume=str(directory)),
    )
    assert_same_run(whole, resumed)
    assert resumed.directory == directory
    assert len((directory / "metrics.jsonl").read_text().splitlines()) == 6
    written = [json.loads(line) for line in (directory / "events.jsonl").read_text().splitlines()]
    assert [e["round"] for e in written if e["kind"] == "resumed"] == [saved["round"]]


def test_checkpoints_go_on_past_a_dead_worker_and_resume_exactly(tmp_path: Path) -> None:
    """Worker 1's device dies in round 3 and answers nothing after: later checkpoints take
    the state it was last seen in, and a resume still ends where the whole run ends."""
    config = least_squares_config(algorithm="overlap", num_rounds=7, momentum=0.9)

    def dies(grid: InProcessGrid) -> InProcessGrid:
        app = grid.client_app

        def dead_from_round_3(msg: Message, context: Context) -> Message:
            if context.node_config["partition-id"] == 1 and (
                context.state.config_records.get("dead") or (round_of(msg) or 0) >= 3
            ):
                context.state["dead"] = ConfigRecord({"dead": True})
                raise ConnectionError("device unreachable")
            return app(msg, context)

        grid.client_app = dead_from_round_3
        return grid

    whole = run(dies(InProcessGrid(client_app, config.num_clients)), config)
    assert [(e["round"], e["kind"]) for e in whole.events] == [(r, "failed") for r in range(3, 9)]
    crashing = config.replace(results_dir=str(tmp_path))
    with pytest.raises(Crash):
        run(dies(CrashingGrid(config.num_clients, at=7)), crashing)
    (directory,) = tmp_path.iterdir()
    assert checkpoint.read(directory)["round"] >= 5  # past the death
    fresh = dies(InProcessGrid(client_app, config.num_clients, seed=9))
    resumed = run(fresh, crashing.replace(resume=str(directory)))
    assert_same_run(whole, resumed)


def test_resume_takes_the_config_the_run_was_started_with(tmp_path: Path) -> None:
    config = least_squares_config(algorithm="overlap", num_rounds=4, results_dir=str(tmp_path))
    with pytest.raises(Crash):
        run(CrashingGrid(config.num_clients, at=3), config)
    (directory,) = tmp_path.iterdir()
    other = least_squares_config(algorithm="local-sgd", resume=str(directory))
    resumed = run(InProcessGrid(client_app, config.num_clients), other)
    assert resumed.config.algorithm == "overlap" and resumed.config.num_rounds == 4


def test_the_checkpoint_is_replaced_atomically(tmp_path: Path) -> None:
    checkpoint.write(tmp_path, {"round": 1, "x": np.arange(3.0)})
    checkpoint.write(tmp_path, {"round": 2, "x": np.arange(4.0)})
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.FILENAME]
    saved = checkpoint.read(tmp_path)
    assert saved["round"] == 2
    np.testing.assert_array_equal(saved["x"], np.arange(4.0))


class Unpicklable:
    def __reduce__(self) -> tuple:
        raise pickle.PicklingError("cannot be written")


def test_a_failed_write_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    checkpoint.write(tmp_path, {"round": 1})
    with pytest.raises(pickle.PicklingError):
        checkpoint.write(tmp_path, {"round": 2, "bad": Unpicklable()})
    assert checkpoint.read(tmp_path)["round"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.FILENAME]


@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "no checkpoint.pkl"), (b"garbage", "unreadable"), (b"", "unreadable")],
)
def test_resuming_without_a_good_checkpoint_is_a_config_error(
    tmp_path: Path, content: bytes | None, why: str
) -> None:
    if content is not None:
        (tmp_path / checkpoint.FILENAME).write_bytes(content)
    with pytest.raises(ConfigError, match=why) as err:
        checkpoint.read(tmp_path)
    assert "resume" in str(err.value)


def test_an_old_checkpoint_layout_is_refused(tmp_path: Path) -> None:
    with (tmp_path / checkpoint.FILENAME).open("wb") as f:
        pickle.dump({"version": 0}, f)
    with pytest.raises(ConfigError, match="version-1"):
        checkpoint.read(tmp_path)


# --- SIGKILL --------------------------------------------------------------------------------


def fedcoop_run(*args: str) -> subprocess.Popen:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    command = [sys.executable, "-m", "simulations.cli", "run", "--engine", "inprocess", "--quiet"]
    return subprocess.Popen(
        [*command, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    keys = [
        "dataset='least-squares'",
        "model='linear'",
        "batch-size=0",
        "num-clients=4",
        "num-rounds=80",
        "tau=2",
        "algorithm='overlap'",
        "momentum=0.9",
    ]
    whole = fedcoop_run(*keys, f"results-dir='{tmp_path / 'whole'}'")
    killed_root = tmp_path / "killed"
    killed = fedcoop_run(*keys, f"results-dir='{killed_root}'")
    reached = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and killed.poll() is None:
            found = list(killed_root.glob(f"*/{checkpoint.FILENAME}"))
            if found:
                try:
                    reached = checkpoint.read(found[0].parent)["round"]
                except ConfigError:
                    reached = 0  # caught between creating and renaming: not yet there
            if reached >= 15:
                break
            time.sleep(0.02)
        assert killed.poll() is None, "the run finished before it could be killed"
        os.kill(killed.pid, signal.SIGKILL)
    finally:
        killed.kill()
        killed.wait()
        assert whole.wait(timeout=300) == 0
    (directory,) = killed_root.iterdir()
    assert not (directory / "final.json").exists()
    assert 15 <= checkpoint.read(directory)["round"] < 80
    resumed = fedcoop_run(f"resume='{directory}'")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()

    (done,) = (tmp_path / "whole").iterdir()
    expected = np.load(done / "final-models.npz")
    got = np.load(directory / "final-models.npz")
    assert_replayed(got["workers"], expected["workers"])
    assert_replayed(got["aux"], expected["aux"])
    rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (done / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 80
    assert_same_rows(rows, want)
    assert RunConfig.from_mapping(
        json.loads((directory / "config.json").read_text())["config"]
    ).resume == str(directory)


class CrashingVectorizedGrid(Crashes, VectorizedGrid):
    def __init__(self, num_nodes: int, at: int) -> None:
        super().__init__(client_app, num_nodes, seed=5)
        self.at = at


@pytest.mark.parametrize("algorithm", ["local-sgd", "overlap"])
def test_a_crashed_run_on_the_vectorized_engine_resumes_to_the_uninterrupted_result(
    tmp_path: Path, algorithm: str
) -> None:
    config = least_squares_config(algorithm=algorithm, num_rounds=6, momentum=0.9)
    whole = run(VectorizedGrid(client_app, config.num_clients), config)
    crashing = config.replace(results_dir=str(tmp_path))
    with pytest.raises(Crash):
        run(CrashingVectorizedGrid(config.num_clients, at=5), crashing)
    (directory,) = tmp_path.iterdir()
    assert checkpoint.read(directory)["round"] in (3, 4)
    resumed = run(
        VectorizedGrid(client_app, config.num_clients, seed=9),
        crashing.replace(resume=str(directory)),
    )
    assert_same_run(whole, resumed)


def test_a_worker_whose_first_message_after_a_resume_fails_keeps_its_checkpointed_state(
    tmp_path: Path,
) -> None:
    """Worker 2's device is unreachable for the first message of the resumed run: the
    checkpointed state (its momentum) goes with the next message that reaches it, so the
    run equals the matrix rule over the workers that answered each round."""
    config = least_squares_config(algorithm="local-sgd", momentum=0.9, num_rounds=6)
    crashing = config.replace(results_dir=str(tmp_path))
    with pytest.raises(Crash):
        run(CrashingGrid(config.num_clients, at=5), crashing)
    (directory,) = tmp_path.iterdir()
    cut = checkpoint.read(directory)["round"]
    fresh = InProcessGrid(client_app, config.num_clients, seed=9)
    refused: list[int] = []

    def unreachable_once(msg: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == 2 and round_of(msg) and not refused:
            refused.append(round_of(msg) or 0)
            raise ConnectionError("device unreachable")
        return client_app(msg, context)

    fresh.client_app = unreachable_once
    resumed = run(fresh, crashing.replace(resume=str(directory)))
    assert refused == [cut + 1]
    assert [(e["round"], e.get("worker"), e["kind"]) for e in resumed.events] == [
        (cut, None, "resumed"),
        (cut + 1, 2, "failed"),
    ]
    assert_matches_reference(config, resumed)
