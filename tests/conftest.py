"""Shared pieces of the tests, the one module test files import helpers from (but for
tests/loopback.py, the slow tests' deployment on loopback): a small least-squares run
through the real Flower path, the matrix rule it must equal (also of a run directory),
clients and grids that misbehave, data files in their real formats, and hand-written run
directories."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# Flower 1.4x must not try the network (update checks, telemetry) while tests run.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from flwr.app import Context, Message, MessageType

from clients import messages
from clients.client_app import app as client_app
from fedcoop import algorithms, participation, workload
from fedcoop.config import RunConfig
from fedcoop.model_vectors import model_vector
from fedcoop.round_schedule import TauSequence
from fedcoop.spec import CooperativeSpec, reference_trajectory
from simulations import compare
from simulations.inprocess import InProcessGrid
from simulations.runner import GRIDS
from strategies.result import RunResult
from strategies.server_app import initial_model, make_server_app, run

LEAST_SQUARES = dict(
    dataset="least-squares",
    model="linear",
    batch_size=0,
    lr=0.05,
    num_rounds=4,
    tau=3,
    num_clients=5,
    results_dir="",
    partition="iid",
)


#: per-round metrics that are measured times, which no two runs share
TIMINGS = frozenset({"wall-time", "compute-time"})


def spec_of(algorithm: str, m: int = 6, **changes: object) -> CooperativeSpec:
    """The resolved spec of `algorithm` on m workers; `changes` are more config fields."""
    return algorithms.resolve(RunConfig(algorithm=algorithm, num_clients=m, **changes).checked())


def least_squares_config(**changes: object) -> RunConfig:
    """A deterministic, full-batch least-squares run: every step is exactly reproducible."""
    return RunConfig.from_mapping({**LEAST_SQUARES, **changes})


def image_overlap_config(model: str) -> RunConfig:
    """A short overlap run of an image model on the embedded MNIST (4 clients, 2 rounds of
    tau 2, momentum): the engines' and devices' float32 comparison."""
    return RunConfig.from_mapping(
        {
            "model": model,
            "algorithm": "overlap",
            "num-clients": 4,
            "num-rounds": 2,
            "tau": 2,
            "momentum": 0.9,
            "results-dir": "",
        }
    )


#: The tiny least-squares run, in config keys, that property tests run accepted configs with.
TINY = {"dataset": "least-squares", "model": "linear", "batch-size": 0, "results-dir": ""}
#: Parameter names by which a user matrix (matrix-file) is refused: W, W[i, j], zeta(W), ...
MATRIX_KEYS = frozenset({"W", "matrix-file", "num-aux", "num-clients"})


def named_key(parameter: str) -> str:
    """The config key (or W) that an error's parameter names: "W[:, 2].sum()" names W,
    "classes_per_partition" names classes-per-partition."""
    return re.sub(r"^zeta\(|\)$|\[.*$| column \d+$", "", parameter).replace("_", "-")


def gradient_oracle(config: RunConfig) -> Callable[[int, np.ndarray, int], np.ndarray]:
    """grad(i, x, k) of worker i's loss (1/2n_i)||A_i x - b_i||^2 (the local optimizer adds
    its terms, such as weight decay)."""
    shards = [workload.shard(config, i, config.num_clients) for i in range(config.num_clients)]
    data = [(s.x.numpy().astype(np.float64), s.y.numpy().astype(np.float64)) for s in shards]

    def grad(i: int, x: np.ndarray, _: int) -> np.ndarray:
        a, b = data[i]
        return a.T @ (a @ x - b) / len(b)

    return grad


# --- comparing floats (docs/testing.md#comparing-floats) ---------------------------------

#: The error two code paths computing the same mathematics may show in a result of each
#: dtype after up to a few hundred steps, relative to the result's largest magnitude: about
#: 4,500 float64 ulps and 80 float32 ulps, far above the rounding seen (float64: at most 7e-16
#: of the magnitude, float32 2e-7; docs/testing.md) and far below what a real
#: defect moves (a step, a sample or a weight wrong: 1e-3 and more).
PATH_RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


def _as_numpy(value: object) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def assert_replayed(actual: object, expected: object) -> None:
    """Bit for bit: `actual` replays `expected`'s computation, the same operations on the
    same shapes, on the same device and kernels (a resumed run, a run whose states went
    through the disk, another delivery order or another process of the same machine)."""
    np.testing.assert_array_equal(_as_numpy(actual), _as_numpy(expected))


def assert_paths_agree(actual: object, expected: object, rtol: float | None = None) -> None:
    """`actual` and `expected` are one result reached by two code paths (a batch and a worker
    alone, two engines, the Flower path and the matrix rule, CUDA and the CPU): equal to
    `rtol` (default: `PATH_RTOL` of the less precise dtype) times the largest magnitude of
    `expected`. A path may sum in another order, so nothing closer is promised."""
    a, b = _as_numpy(actual), _as_numpy(expected)
    if rtol is None:
        dtypes = {np.dtype(a.dtype), np.dtype(b.dtype)}
        if not dtypes <= PATH_RTOL.keys():
            raise TypeError(f"no path tolerance for {sorted(map(str, dtypes))}")
        rtol = max(PATH_RTOL[d] for d in dtypes)
    scale = float(np.max(np.abs(b), initial=0.0))
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(scale, np.finfo(np.float64).tiny))


# --- runs on the in-process grid and the matrix rule they must equal --------------------


def x0_of(config: RunConfig) -> np.ndarray:
    """The initial model every worker starts from, as a float64 vector."""
    return model_vector(initial_model(config)).double().numpy()


def run_in_process(
    config: RunConfig, seed: int = 0, engine: str = "inprocess"
) -> tuple[RunResult, InProcessGrid]:
    """The run of `config` through the real strategy and ClientApp on an in-process engine
    (`simulations.runner.GRIDS`); `seed` shuffles delivery."""
    grid = GRIDS[engine](client_app, config.num_clients, seed=seed)
    return run(grid, config), grid


def run_on_simulation_engine(config: RunConfig) -> RunResult:
    """The run of `config` through Flower's simulation engine (Ray actors, one SuperNode per
    worker, the ClientApp's state in Flower's contexts), one CPU per client."""
    from flwr.simulation import run_simulation  # Ray: only the tests that use it import it

    results: list[RunResult] = []
    run_simulation(
        server_app=make_server_app(config, on_result=results.append),
        client_app=client_app,
        num_supernodes=config.num_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    assert len(results) == 1, "the ServerApp did not finish"
    return results[0]


def run_tiny(values: Mapping[str, Any]) -> RunResult:
    """Run a config that passed the server's checks on the in-process grid; it must finish
    finitely."""
    config = RunConfig.from_mapping(values)
    result = run(InProcessGrid(client_app, config.num_clients, seed=config.seed), config)
    assert len(result.rounds) == config.num_rounds
    for metrics in result.rounds:
        assert all(math.isfinite(v) for v in metrics.values()), metrics
    return result


def reference_final(
    config: RunConfig, result: RunResult, participants: Callable[[int], set[int]] | None = None
) -> np.ndarray:
    """X_{K+1} of the matrix rule for the spec that the run actually used (d x (m+v)), with
    the config's seeded sample of workers per round unless `participants` says who trained."""
    taus = tuple(row["tau"] for row in result.rounds)
    m = result.spec.num_workers
    # the taus the run decided, replayed (an adaptive schedule reads the run's losses)
    spec = dataclasses.replace(result.spec, tau_schedule=TauSequence(taus))
    return reference_trajectory(
        spec,
        x0_of(config),
        gradient_oracle(config),
        config.lr,
        sum(taus),
        optimizer=algorithms.local_optimizer(config),
        participants=participants
        or (lambda r: participation.sample(config.seed, r, m, config.participation)),
    )[-1]


def answered(result: RunResult, m: int) -> Callable[[int], set[int]]:
    """Who trained each round, as the run's fault events tell it."""
    left_out: dict[int, set[int]] = {}
    for e in result.events:
        if e["kind"] in ("failed", "deadline", "rejected", "busy"):
            left_out.setdefault(e["round"], set()).add(e["worker"])
    return lambda r: set(range(m)) - left_out.get(r, set())


def assert_matches_reference(
    config: RunConfig, result: RunResult, workers: list[int] | None = None
) -> None:
    """The run's anchors and `workers`' (default all) final models equal the matrix rule
    run over the workers that answered each round."""
    m = result.spec.num_workers
    assert_follows_rule(result, reference_final(config, result, answered(result, m)), workers)


def assert_follows_rule(
    result: RunResult, ref: np.ndarray, workers: list[int] | None = None
) -> None:
    """The run's anchors and `workers`' (default all) final models are the matrix rule's
    X_{K+1} `ref` (d x (m+v)): one result by two paths (`assert_paths_agree`)."""
    m = result.spec.num_workers
    workers = list(range(m)) if workers is None else workers
    assert result.workers is not None and result.aux is not None
    assert_paths_agree(result.workers[workers], ref[:, workers].T)
    assert_paths_agree(result.aux, ref[:, m:].T)


def recorded_result(run_dir: Path) -> tuple[RunConfig, RunResult]:
    """A run directory read back as its config and the parts of its result the matrix rule
    is checked against: rounds (their taus), events (who answered), final models."""
    run = compare.load_run(run_dir)
    config = RunConfig.from_mapping(run.config)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    node_of = json.loads((run_dir / "config.json").read_text())["node-of-worker"]
    result = RunResult(config, algorithms.resolve(config), node_of, run.rows, events=events)
    with np.load(run_dir / "final-models.npz") as models:
        result.workers, result.aux = models["workers"], models["aux"]
    return config, result


# --- messages, and clients and grids that misbehave --------------------------------------

ClientAppLike = Callable[[Message, Context], Message]


def round_of(msg: Message) -> int | None:
    """The round a train message starts (None for other messages, and for an eager-reply
    message that only collects)."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return None
    return messages.read_train(msg)[0].round


def train_message(
    config: RunConfig, node: int, round_: int, x0: np.ndarray, **changes: Any
) -> Message:
    """The server's train message that starts `round_` on `node` (round 1 carries `x0`);
    `changes`: header fields set otherwise (`messages.RoundHeader`)."""
    header = messages.RoundHeader(
        update_rule="mix-after-step",
        client_rule="mix",
        round=round_,
        local_steps=config.tau,
        sync=None if round_ == 1 else round_ - 1,
    )
    init = x0 if round_ == 1 else None
    content = messages.train_content(config, dataclasses.replace(header, **changes), init=init)
    return Message(content, node, MessageType.TRAIN, group_id=str(round_))


def misbehaving(
    partition: int, rounds: Iterable[int], action: Callable[[Message, Context], Message]
) -> ClientAppLike:
    """The real ClientApp, except that `partition`'s `rounds` go through `action`."""
    rounds = set(rounds)

    def app(msg: Message, context: Context) -> Message:
        if context.node_config["partition-id"] == partition and round_of(msg) in rounds:
            return action(msg, context)
        return client_app(msg, context)

    return app


def explode(msg: Message, context: Context) -> Message:
    raise RuntimeError("disk full on the device")


def tamper(change: Callable[[Message], None]) -> Callable[[Message, Context], Message]:
    """Run the round for real, then corrupt the reply with `change`."""

    def action(msg: Message, context: Context) -> Message:
        reply = client_app(msg, context)
        change(reply)
        return reply

    return action


def set_model(x_of: Callable[[np.ndarray], np.ndarray]) -> Callable[[Message], None]:
    """A change to a reply that replaces its model x by `x_of(x)`."""

    def change(reply: Message) -> None:
        record = messages.reply_record(reply)
        record[messages.MODEL] = messages.encode(x_of(messages.read_vector(record, messages.MODEL)))

    return change


class SlowNodeGrid(InProcessGrid):
    """Holds back one node's reply to round `slow_round` until the server has moved on to
    round `release_round`, like a device that is far too slow for one round."""

    def __init__(self, partition: int, slow_round: int, release_round: int, num_nodes: int):
        super().__init__(client_app, num_nodes)
        by_partition = {c.node_config["partition-id"]: n for n, c in self.contexts.items()}
        self.node = by_partition[partition]
        self.slow_round, self.release_round = slow_round, release_round
        self.slow_id: str | None = None
        self.moved_on = False
        self.held: Message | None = None

    def push_messages(self, messages_: Iterable[Message]) -> Iterable[str]:
        messages_ = list(messages_)
        ids = list(super().push_messages(messages_))
        for msg, msg_id in zip(messages_, ids, strict=True):
            if msg.metadata.dst_node_id == self.node and round_of(msg) == self.slow_round:
                self.slow_id = msg_id
            self.moved_on |= (round_of(msg) or 0) >= self.release_round
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        wanted = list(message_ids)
        out = []
        for reply in super().pull_messages(wanted):
            if reply.metadata.reply_to_message_id == self.slow_id:
                self.held = reply
            else:
                out.append(reply)
        if self.held is not None and self.moved_on and self.slow_id in wanted:
            out.append(self.held)
            self.held = None
        return out


# --- data files in their published formats ------------------------------------------------

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file as the format defines it: magic, big-endian dims, big-endian payload."""
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim])
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    return header + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_mnist(
    directory: Path, seed: int, compress: bool, sizes: tuple[int, int] = (30, 12)
) -> tuple[np.ndarray, ...]:
    """The four MNIST-format IDX files with random images and labels; returns the arrays."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = []
    for n in sizes:
        arrays.append(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        arrays.append(rng.integers(0, 10, n).astype(np.uint8))
    for name, array in zip(MNIST_FILES, arrays, strict=True):
        raw = idx_bytes(array)
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return tuple(arrays)


def write_pickle(path: Path, doc: dict, protocol: int = 2) -> None:
    with open(path, "wb") as handle:
        pickle.dump(doc, handle, protocol=protocol)


def _cifar_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """N x 3072 uint8 rows whose three channel planes have clearly different statistics."""
    planes = [rng.integers(lo, hi, (n, 1024)) for lo, hi in ((0, 256), (0, 64), (128, 256))]
    return np.concatenate(planes, axis=1).astype(np.uint8)


def write_cifar10(directory: Path, seed: int, per_batch: int = 6, test: int = 5) -> dict:
    """data_batch_1..5 and test_batch as published: protocol-2 pickles with bytes keys."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name, n in [*((f"data_batch_{k}", per_batch) for k in range(1, 6)), ("test_batch", test)]:
        doc = {
            b"batch_label": f"{name} of 5".encode(),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": _cifar_images(rng, n),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        write_pickle(directory / name, doc)
        batches[name] = doc
    return batches


def write_cifar100(directory: Path, seed: int, sizes: tuple[int, int] = (40, 7)) -> dict:
    """CIFAR-100's train and test files, with fine and coarse labels."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    parts = {}
    for name, n in zip(("train", "test"), sizes, strict=True):
        fine = rng.integers(0, 100, n)
        fine[0] = 99
        doc = {
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{name} batch 1 of 1".encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"data": _cifar_images(rng, n),
        }
        write_pickle(directory / name, doc)
        parts[name] = doc
    return parts


# --- run directories written by hand -----------------------------------------------------


def write_run(root: Path, name: str, rows: list[dict[str, Any]], **config: Any) -> Path:
    """A run directory written by hand: config.json's config and metrics.jsonl."""
    path = root / name
    path.mkdir(parents=True)
    mapping = RunConfig.from_mapping({"results-dir": "", **config}).to_mapping()
    (path / "config.json").write_text(json.dumps({"config": mapping}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)
