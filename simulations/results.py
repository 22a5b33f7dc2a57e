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
import gzip
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
    # "flower:FedAdam" names a directory without the colon, which some file systems refuse
    name = config.algorithm.replace(":", "-")
    base = Path(root).expanduser().resolve() / f"{name}-seed{config.seed}-{stamp}"
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


#: what an archived run directory keeps: enough for every table, plot and report
ARCHIVED = ("config.json", "final.json", "events.jsonl", "metrics.jsonl.gz")


def archive(path: Path) -> None:
    """Shrink a finished run directory in place to what reports read (`ARCHIVED`): its
    metrics gzipped, no model, checkpoint or CSV files (the CSV is the JSON lines again).
    How runs are kept in the repository, so that a grid of several sessions can be
    regenerated from files alone (runs/README.md); a run already archived is left as is."""
    if not (path / "final.json").is_file():
        raise ValueError(f"{path} has no final.json: only a finished run is archived")
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        # mtime 0: the same rows give the same bytes, so a re-archived run is no change
        (path / "metrics.jsonl.gz").write_bytes(gzip.compress(metrics.read_bytes(), mtime=0))
        metrics.unlink()
    for extra in path.iterdir():
        if extra.is_file() and extra.name not in ARCHIVED:
            extra.unlink()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """A run directory's rows, from metrics.jsonl or, archived, metrics.jsonl.gz."""
    plain = path / "metrics.jsonl"
    text = (
        plain.read_text()
        if plain.is_file()
        else gzip.decompress((path / "metrics.jsonl.gz").read_bytes()).decode()
    )
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def has_metrics(path: Path) -> bool:
    """Whether `path` holds a run's rows (plain or archived)."""
    return (path / "metrics.jsonl").is_file() or (path / "metrics.jsonl.gz").is_file()
