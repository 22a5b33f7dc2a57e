"""Results on disk: one directory per run, enough to redraw any plot or table from files.

config.json holds the full resolved config and the spec actually run (tau, W, v, rules);
metrics.jsonl and metrics.csv one row per round; final.json the end state's metrics (and,
for a run that stopped early, e.g. every model NaN, "failed": why, after its settled rounds);
final-models.npz the workers' (m x d; NaN rows for workers that never came back) and
auxiliary nodes' (v x d) final models, or a Flower stock strategy's global model (server,
d); events.jsonl every fault the run rode out (failed, late, rejected workers, ...) with
round, worker, node and reason, counted in final.json.
"""

from __future__ import annotations

import csv
import json
import platform
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flwr
import numpy as np
import torch

from fedcoop.config import RunConfig
from fedcoop.model_vectors import default_device
from strategies.result import RunResult


def run_directory(root: str | Path, config: RunConfig) -> Path:
    """A fresh directory under root named by algorithm, seed and time."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root).expanduser().resolve() / f"{config.algorithm}-seed{config.seed}-{stamp}"
    path, n = base, 1
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    path.mkdir(parents=True)
    return path


def write_results(result: RunResult, path: Path) -> Path:
    """Write config, per-round metrics and final metrics into the run directory `path`."""
    spec = result.spec
    config: dict[str, Any] = {
        "config": result.config.to_mapping(),
        "spec": {
            "tau": spec.tau,
            # rounds.csv has each round's tau
            "tau-schedule": spec.tau_schedule.describe() if spec.tau_schedule else "fixed",
            "num-workers": spec.num_workers,
            "num-aux": spec.num_aux,
            # with a schedule of W_r: their expectation E[W_r]
            "W": spec.w.tolist(),
            "W-per-round": spec.w_schedule is not None,
            "update-rule": spec.rule.value,
            "client-rule": spec.client_rule.value,
            "anchor-momentum": spec.anchor_momentum,
        },
        "node-of-worker": result.node_of_worker,
        "environment": {
            "python": platform.python_version(),
            "flwr": flwr.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "device": str(default_device()),
        },
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    write_jsonl(path / "metrics.jsonl", result.rounds)
    if result.rounds:
        write_csv(path / "metrics.csv", result.rounds)
    named = {"workers": result.workers, "aux": result.aux, "server": result.server_model}
    models = {k: v for k, v in named.items() if v is not None}
    if models:
        np.savez(path / "final-models.npz", **models)
    write_jsonl(path / "events.jsonl", result.events)
    final = {
        **({"failed": result.failed} if result.failed else {}),
        "last-round": result.rounds[-1] if result.rounds else {},
        **result.client_evaluation,
        "faults": dict(Counter(event["kind"] for event in result.events)),
    }
    (path / "final.json").write_text(json.dumps(final, indent=2))
    return path


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line."""
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """A CSV with every key any row has (in first-seen order); empty cells for the rest."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
