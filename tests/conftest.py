"""Shared pieces of the tests: a small least-squares run through the real Flower path."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
import torch

# Flower 1.4x must not try the network (update checks, telemetry) while tests run.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from flwr.app import Message, MessageType

from clients import messages
from fedcoop import algorithms, workload
from fedcoop.config import RunConfig
from fedcoop.cooperative import CooperativeSpec

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


def gradient_oracle(config: RunConfig) -> Callable[[int, np.ndarray, int], np.ndarray]:
    """grad(i, x, k) of worker i's local objective (1/2n_i)||A_i x - b_i||^2 + wd/2 ||x||^2."""
    shards = [workload.shard(config, i, config.num_clients) for i in range(config.num_clients)]
    data = [(s.x.numpy().astype(np.float64), s.y.numpy().astype(np.float64)) for s in shards]

    def grad(i: int, x: np.ndarray, _: int) -> np.ndarray:
        a, b = data[i]
        return a.T @ (a @ x - b) / len(b) + config.weight_decay * x

    return grad


def round_of(msg: Message) -> int | None:
    """The round a train message starts (None for other messages, and for an eager-reply
    message that only collects)."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return None
    header = msg.content.config_records[messages.HEADER]
    return int(header["round"]) if "round" in header else None


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)
