"""Checkpoint and resume: a run killed at any point continues to the same models and metrics.

The in-process tests crash the server between rounds and resume on a fresh grid (new node
ids, new client processes' worth of state); the kill test (slow suite) SIGKILLs a `fedcoop run`
process mid-run and resumes its run directory from the command line. Either way the final models
and every per-round metric but wall time equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
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
        dict(algorithm="scaffold", participation=0.6, global_lr=0.5),
        dict(
            algorithm="fednova",
            momentum=0.5,
            participation=0.6,
            round_time=0.5,
            step_time=0.05,
            device_speeds="uniform:0.1:1.0",
        ),
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
        "scaffold-partial",
        "fednova-budget",
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


# --- the format: npz + JSON, no pickle --------------------------------------------------------

#: a float64 NaN with a payload, which an array keeps bit for bit
ODD_NAN = np.array([0x7FF8_0000_DEAD_BEEF], dtype=np.uint64).view(np.float64)


def every_kind() -> dict:
    """A tree with every kind of value a checkpoint holds, nested."""
    return {
        "round": 3,
        "big": 2**70,
        "flags": [True, False, None],
        "floats": [0.1, -0.0, 1e-310, math.nan, math.inf, -math.inf],
        "text": 'ü "quoted"\n',
        "workers": {0: (4, 8, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}), 1: None},
        -1: ((), [], {}, ("nested", (1, [2.5, {"k": (None,)}]))),
        "scalars": (
            np.float16(0.1),
            np.float32(-2.5),
            np.float64(math.nan),
            np.int8(-128),
            np.uint64(2**64 - 1),
            np.bool_(True),
            np.complex64(1 - 2j),
        ),
        "arrays": [
            ODD_NAN,
            np.array([np.nan, np.inf, -0.0]),
            np.array(7.25),  # 0-d
            np.zeros(0, dtype=np.int8),
            np.zeros((2, 0, 3), dtype=np.uint16),
            np.array([[True, False]]),
            np.array([1 + 1j, -1j], dtype=np.complex128),
            np.arange(4, dtype=">f8"),  # big-endian stays big-endian
            np.arange(12, dtype=np.int32).reshape(3, 4).T,  # not C-contiguous
            np.arange(3, dtype=np.float16),
        ],
    }


def assert_identical(got: object, want: object, where: str = "state") -> None:
    """Equal with the same types all the way down: keys, tuples, dtypes, bits."""
    assert type(got) is type(want), where
    if isinstance(want, np.ndarray | np.generic):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), where
        assert got.tobytes() == want.tobytes(), where
    elif isinstance(want, dict):
        assert [(type(k), k) for k in got] == [(type(k), k) for k in want], where
        for k, v in want.items():
            assert_identical(got[k], v, f"{where}[{k!r}]")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_identical(a, b, f"{where}[{i}]")
    elif isinstance(want, float):
        assert struct.pack("<d", got) == struct.pack("<d", want), where  # NaN, -0.0 too
    else:
        assert got == want, where


def test_every_kind_of_value_comes_back_exactly(tmp_path: Path) -> None:
    checkpoint.write(tmp_path, every_kind())
    assert_identical(checkpoint.read(tmp_path), every_kind())


def test_a_numpy_integer_key_comes_back_as_the_equal_int(tmp_path: Path) -> None:
    checkpoint.write(tmp_path, {"late": {np.int64(2): 5}})
    (key,) = checkpoint.read(tmp_path)["late"]
    assert type(key) is int and key == 2


class Opaque:
    """An object of the caller's: a checkpoint holds plain data only."""


def recursive() -> list:
    loop: list = [1]
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"bad": Opaque()}, r"state\['bad'\] is a Opaque"),
        ({"workers": {1: (2, 3, {"f": print})}}, r"state\['workers'\]\[1\]\[2\]\['f'\]"),
        ({"s": {1, 2}}, r"state\['s'\] is a set"),
        ({"b": b"bytes"}, r"state\['b'\] is a bytes"),
        ({"o": np.array([None], dtype=object)}, r"state\['o'\] has dtype object"),
        ({"u": [np.array(["text"])]}, r"state\['u'\]\[0\] has dtype <U4"),
        ({"d": {(1, 2): 0}}, r"state\['d'\] has the key \(1, 2\)"),
        ({"d": {True: 0}}, r"state\['d'\] has the key True"),
        ({"loop": recursive()}, r"state\['loop'\]\[1\] contains itself"),
    ],
    ids=[
        "object",
        "function",
        "set",
        "bytes",
        "object-array",
        "str-array",
        "tuple-key",
        "bool-key",
        "cycle",
    ],
)
def test_a_value_a_checkpoint_cannot_hold_keeps_the_last_good_checkpoint(
    tmp_path: Path, bad: dict, where: str
) -> None:
    checkpoint.write(tmp_path, {"round": 1})
    with pytest.raises(TypeError, match=where):
        checkpoint.write(tmp_path, {"round": 2, **bad})
    assert checkpoint.read(tmp_path)["round"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.FILENAME]


#: what a Tripwire did when it was unpickled (it never should be)
TRIPPED: list[str] = []


def trip(what: str) -> None:
    TRIPPED.append(what)


class Tripwire:
    """Unpickling one calls trip(): the code a pickle runs on load."""

    def __reduce__(self) -> tuple:
        return trip, ("unpickled",)


@pytest.fixture
def tripwire() -> Iterator[None]:
    TRIPPED.clear()
    yield
    assert TRIPPED == [], "a checkpoint file was unpickled"


def test_an_old_pickle_checkpoint_is_refused_with_how_to_resume_it(
    tmp_path: Path, tripwire: None
) -> None:
    old = {"version": 1, "round": 3, "x": np.arange(3.0), "hook": Tripwire()}
    (tmp_path / "checkpoint.pkl").write_bytes(pickle.dumps(old))
    with pytest.raises(ConfigError) as err:
        checkpoint.read(tmp_path)
    message = str(err.value)
    assert "pickle checkpoint" in message and "earlier fedcoop version" in message
    assert "does not load pickles" in message
    assert "with the fedcoop that wrote it" in message and "resume=DIR" in message
    # the way a run meets it: `fedcoop run resume=DIR`
    with pytest.raises(ConfigError, match="does not load pickles"):
        server_app.with_checkpoint(least_squares_config(resume=str(tmp_path)))


def npz_with(directory: Path, document: object, **arrays: np.ndarray) -> None:
    """A checkpoint file made by hand: `document` (JSON-encoded unless bytes) and arrays."""
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    tree = np.frombuffer(raw, dtype=np.uint8)
    with (directory / checkpoint.FILENAME).open("wb") as f:
        np.savez(f, tree=tree, **arrays)


def header(tree: object) -> dict:
    """The JSON document of this version's checkpoint with `tree`."""
    return {"format": "fedcoop-checkpoint", "version": checkpoint.VERSION, "tree": tree}


def object_npy(directory: Path) -> None:
    """An .npy of pickled objects (no zip) named as the checkpoint."""
    with (directory / checkpoint.FILENAME).open("wb") as f:
        np.save(f, np.array([Tripwire()], dtype=object))


@pytest.mark.parametrize(
    "make",
    [
        lambda d: (d / checkpoint.FILENAME).write_bytes(pickle.dumps({"x": Tripwire()})),
        lambda d: npz_with(
            d, header({"dict": [["x", {"array": "a0"}]]}), a0=np.array([Tripwire()], dtype=object)
        ),
        object_npy,
    ],
    ids=["a-pickle-named-npz", "an-object-array-in-the-npz", "an-object-npy"],
)
def test_loading_never_unpickles(tmp_path: Path, tripwire: None, make: Callable) -> None:
    make(tmp_path)
    with pytest.raises(ConfigError, match="unreadable"):
        checkpoint.read(tmp_path)


def truncated(directory: Path) -> None:
    checkpoint.write(directory, every_kind())
    path = directory / checkpoint.FILENAME
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (None, "no checkpoint.npz"),
        (b"garbage", "unreadable"),
        (b"", "unreadable"),
        (truncated, "unreadable"),
        (lambda d: npz_with(d, b"{not json"), "unreadable"),
        (lambda d: npz_with(d, b'{"version": NaN}'), "non-standard JSON token NaN"),
        (lambda d: npz_with(d, header({"array": "a7"})), "unreadable"),
        (lambda d: npz_with(d, header({"dict": [["x", {"pickle": "os.system"}]]})), "malformed"),
        (lambda d: npz_with(d, header({"dict": [[1.5, 0]]})), "malformed dict entry"),
        (lambda d: npz_with(d, header([1, 2])), "tree is not a dict"),
        (lambda d: npz_with(d, header({"scalar": "<f8", "bytes": "00"})), "unreadable"),
        (lambda d: np.savez(d / checkpoint.FILENAME, a0=np.arange(3)), "no 'tree' member"),
    ],
    ids=[
        "missing",
        "garbage",
        "empty",
        "truncated",
        "not-json",
        "nan-token",
        "missing-array",
        "unknown-node",
        "float-key",
        "not-a-dict",
        "short-scalar",
        "no-tree",
    ],
)
def test_resuming_without_a_good_checkpoint_is_a_config_error(
    tmp_path: Path, make: bytes | Callable | None, why: str
) -> None:
    if isinstance(make, bytes):
        (tmp_path / checkpoint.FILENAME).write_bytes(make)
    elif make is not None:
        make(tmp_path)
    with pytest.raises(ConfigError, match=why) as err:
        checkpoint.read(tmp_path)
    assert "resume" in str(err.value)


@pytest.mark.parametrize(
    "document",
    [
        {"format": "fedcoop-checkpoint", "version": 1, "tree": {"dict": []}},
        {"format": "fedcoop-checkpoint", "version": 3, "tree": {"dict": []}},
        {"format": "something-else", "version": 2, "tree": {"dict": []}},
        {"tree": {"dict": []}},
    ],
    ids=["older", "newer", "another-format", "unversioned"],
)
def test_another_checkpoint_layout_is_refused(tmp_path: Path, document: dict) -> None:
    npz_with(tmp_path, document)
    with pytest.raises(ConfigError, match=f"not a version-{checkpoint.VERSION} fedcoop"):
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


@pytest.mark.parametrize("algorithm", ["local-sgd", "overlap", "scaffold"])
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
