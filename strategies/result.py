"""What a run hands back: its spec, its round rows, its final models and what it survived."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcoop.config import RunConfig
from fedcoop.spec import CooperativeSpec

#: (model vector) -> metrics of the server-side evaluation, e.g. test loss and accuracy
EvaluateFn = Callable[[np.ndarray], dict[str, float]]


@dataclass
class RunResult:
    """Everything a run produced, for results files and tests."""

    config: RunConfig
    spec: CooperativeSpec
    node_of_worker: list[int]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    #: workers' models after the final sync (m x d) and auxiliary nodes (v x d)
    workers: np.ndarray | None = None
    aux: np.ndarray | None = None
    #: a stock strategy's final global model (d), which its workers do not hold
    server_model: np.ndarray | None = None
    client_evaluation: dict[str, float] = field(default_factory=dict)
    #: the run directory its results were written to, if any
    directory: Path | None = None
    #: every fault the run survived: {round, worker, node, kind, reason}; kind is one of
    #: failed, deadline (left out of the round), late (its discarded reply came), busy (left
    #: out of a round while a late reply was still outstanding), rejected, split (those two
    #: name no worker), resumed (the run continued from that round's checkpoint)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: why the run stopped before its last round (e.g. every worker's model became NaN);
    #: `rounds` then holds the rounds settled before it
    failed: str | None = None
