"""Compare runs: sweep run-config keys over one data partition and summarize from the files.

    fedcoop compare --grid algorithm=overlap,local-sgd,cocod --grid tau=2,8 partition=skewed

`expand` turns fixed keys plus a grid of swept keys into the cartesian product of checked
configs; `sweep` runs them into one compare directory; `summarize` reads that directory back
(config.json and metrics.jsonl of each run), so the summary and the plots (simulations.plots)
come from the same files a later `fedcoop plot` reads, never from memory.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcoop import algorithms, workload
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError
from simulations.results import write_csv
from simulations.runner import check_engine, run_config

#: Keys that say where a run's files are, never a setting: not swept, and not compared when
#: simulations.reproduce matches a finished run to a config.
NOT_SETTINGS = frozenset({"results-dir", "resume"})


@dataclass(frozen=True)
class RecordedRun:
    """One run directory as read back from disk: its config and its per-round metrics."""

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]

    def column(self, key: str) -> list[float] | None:
        """The metric over the rounds, or None when some round lacks it (an older run)."""
        values = [row.get(key) for row in self.rows]
        return None if not values or None in values else values


def load_run(path: Path) -> RecordedRun:
    """Read config.json and metrics.jsonl of one run directory."""
    config = json.loads((path / "config.json").read_text())["config"]
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return RecordedRun(path, config, [json.loads(line) for line in lines if line.strip()])


def load_runs(directory: str | Path) -> list[RecordedRun]:
    """The run in a run directory, or every run (by name) under a compare directory."""
    directory = Path(directory)
    if (directory / "config.json").is_file():
        return [load_run(directory)]
    runs = [load_run(p) for p in sorted(directory.glob("*/")) if (p / "metrics.jsonl").is_file()]
    if not runs:
        raise ConfigError("directory", str(directory), "must be a run or compare directory")
    return runs


def varying_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The config keys whose values differ among the runs: what a comparison swept."""
    keys = dict.fromkeys(k for c in configs for k in c if k not in NOT_SETTINGS)
    return [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]


def label(config: Mapping[str, Any], keys: Sequence[str]) -> str:
    """A run's name in tables and legends: its algorithm and its values of the swept keys."""
    return " ".join(
        [str(config["algorithm"])] + [f"{k}={config.get(k)}" for k in keys if k != "algorithm"]
    )


def expand(base: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[RunConfig]:
    """Every combination of the grid's values over the fixed keys in base, all checked (the
    algorithm's matrices and the partition too) before anything runs, so that a bad value
    fails now rather than after the runs before it."""
    grid = {k.replace("_", "-"): list(v) for k, v in grid.items()}
    for key, values in grid.items():
        if key in NOT_SETTINGS:
            raise ConfigError(key, values, "set by compare for each run; not a swept key")
        if not values:
            raise ConfigError(key, values, "needs at least one value to sweep")
    fixed = {k.replace("_", "-"): v for k, v in base.items()}
    configs = []
    for combination in itertools.product(*grid.values()):
        config = RunConfig.from_mapping({**fixed, **dict(zip(grid, combination, strict=True))})
        algorithms.resolve(config)
        workload.partition_indices(config, config.num_clients)
        configs.append(config)
    return configs


def sweep(
    configs: Sequence[RunConfig],
    out: str | Path,
    *,
    engine: str = "simulation",
    quiet: bool = False,
    cpus_per_client: float = 1.0,
    gpus_per_client: float | None = None,
    ray_address: str | None = None,
    console: Console | None = None,
) -> Path:
    """Run every config with its results under `out` (new or empty, so that the directory
    holds this comparison only), behind a progress bar; returns `out`. The engine options
    are `simulations.runner.run_config`'s, checked before the first run."""
    check_engine(engine, ray_address)
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise ConfigError("out", str(out), "must be a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    keys = varying_keys([c.to_mapping() for c in configs])
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("compare", total=len(configs))
        for config in configs:
            progress.update(task, description=label(config.to_mapping(), keys))
            run_config(
                config.replace(results_dir=str(out)),
                engine=engine,
                quiet=quiet,
                cpus_per_client=cpus_per_client,
                gpus_per_client=gpus_per_client,
                ray_address=ray_address,
            )
            progress.advance(task)
    return out


def time_to_target(
    rows: Sequence[Mapping[str, Any]], target: float | None
) -> tuple[int | None, float | None]:
    """(round, virtual time) at which test accuracy first reaches `target`; None for what a
    run never reached or never recorded (no target, no accuracy, no virtual clock)."""
    if target is None:
        return None, None
    for row in rows:
        if row.get("test-accuracy", float("-inf")) >= target:
            return row["round"], row.get("virtual-time")
    return None, None


def summarize(runs: Sequence[RecordedRun], target: float | None) -> list[dict[str, Any]]:
    """One summary row per run: its swept values, final and best metrics, time to target,
    bytes sent and workers dropped or rejected over all rounds; None wherever the run's
    metrics lack the quantity."""
    keys = varying_keys([r.config for r in runs])
    summary = []
    for run in runs:
        last = run.rows[-1] if run.rows else {}
        accuracy = [row["test-accuracy"] for row in run.rows if "test-accuracy" in row]
        rounds_to_target, time_to = time_to_target(run.rows, target)
        summary.append(
            {
                "run": run.path.name,
                "label": label(run.config, keys),
                "algorithm": run.config["algorithm"],
                **{k: run.config[k] for k in keys if k != "algorithm"},
                "rounds": last.get("round"),
                "final-accuracy": last.get("test-accuracy"),
                "best-accuracy": max(accuracy, default=None),
                "final-test-loss": last.get("test-loss"),
                "final-train-loss": last.get("train-loss"),
                "virtual-time": last.get("virtual-time"),
                "rounds-to-target": rounds_to_target,
                "virtual-time-to-target": time_to,
                "bytes-total": _total(run, "bytes-up", "bytes-down"),
                "dropped": _total(run, "dropped"),
                "rejected": _total(run, "rejected"),
            }
        )
    return summary


def _total(run: RecordedRun, *keys: str) -> float | None:
    """The sum of these metrics over all rounds; None if the run did not record them."""
    columns = [run.column(k) for k in keys]
    return None if None in columns else sum(sum(c) for c in columns)


def write_summary(
    directory: Path, summary: Sequence[Mapping[str, Any]], target: float | None
) -> list[Path]:
    """summary.csv (one row per run, empty cells for n/a) and summary.json (with the target)."""
    write_csv(directory / "summary.csv", summary)
    payload = {"target-accuracy": target, "runs": list(summary)}
    (directory / "summary.json").write_text(json.dumps(payload, indent=2))
    return [directory / "summary.csv", directory / "summary.json"]


def summary_table(summary: Sequence[Mapping[str, Any]], target: float | None) -> Table:
    """The comparison as a rich table, one row per run, n/a for what a run lacks."""
    goal = "n/a" if target is None else f"{target:g}"
    columns = {
        "final-accuracy": ("final acc", ".4f"),
        "best-accuracy": ("best acc", ".4f"),
        "final-test-loss": ("test loss", ".4f"),
        "final-train-loss": ("train loss", ".4f"),
        "rounds-to-target": (f"rounds to {goal}", "d"),
        "virtual-time-to-target": (f"virtual s to {goal}", ".2f"),
        "bytes-total": ("MB sent", ".3f"),
    }
    table = Table(title=f"{len(summary)} runs")
    table.add_column("run")
    for title, _ in columns.values():
        table.add_column(title, justify="right")
    for row in summary:
        cells = []
        for key, (_, spec) in columns.items():
            value = row.get(key)
            value = value / 1e6 if key == "bytes-total" and value is not None else value
            cells.append("n/a" if value is None else format(value, spec))
        table.add_row(row["label"], *cells)
    return table


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (runtime, loss) points no other point beats on both (lower is better): the
    error-runtime trade-off a choice of tau can reach. NaN points are never on it."""
    valid = [(x, y) for x, y in points if not (math.isnan(x) or math.isnan(y))]
    return [
        (x, y) in valid and not any(u <= x and v <= y and (u, v) != (x, y) for u, v in valid)
        for x, y in points
    ]
