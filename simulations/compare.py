"""Compare runs: sweep run-config keys over one data partition and summarize from the files.

    fedcoop compare --grid algorithm=overlap,local-sgd,cocod --grid tau=2,8 partition=skewed
    fedcoop compare --grid tau=2,8 --seeds 3

`expand` turns fixed keys plus a grid of swept keys (and, with seeds > 1, the seed as one
more swept key) into the cartesian product of checked configs; `sweep` runs them into one
compare directory; `summarize` reads that directory back (config.json and metrics.jsonl of
each run), so the summary and the plots (simulations.plots) come from the same files a later
`fedcoop plot` reads, never from memory. `grid_points` groups the runs that differ only by
seed into one row of mean, sample std and 95% interval per figure (simulations.stats).
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
from simulations import stats
from simulations.results import has_metrics, read_metrics, write_csv
from simulations.runner import check_engine, run_config

#: Keys that say where a run's files are, never a setting: not swept, and not compared when
#: simulations.reproduce matches a finished run to a config.
NOT_SETTINGS = frozenset({"results-dir", "resume"})

#: What the summary reports of each run, averaged over the seeds of each grid point.
FIGURES = (
    "rounds",
    "final-accuracy",
    "best-accuracy",
    "final-test-loss",
    "final-train-loss",
    "virtual-time",
    "rounds-to-target",
    "virtual-time-to-target",
    "bytes-total",
    "dropped",
    "rejected",
)


@dataclass(frozen=True)
class RecordedRun:
    """One run directory as read back from disk: its config and its per-round metrics."""

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    #: why the run stopped before its last round (final.json's "failed"), None if it did not
    failed: str | None = None

    def column(self, key: str) -> list[float] | None:
        """The metric over the rounds, or None when some round lacks it (an older run)."""
        values = [row.get(key) for row in self.rows]
        return None if not values or None in values else values


def load_run(path: Path) -> RecordedRun:
    """Read config.json, the metrics (plain or archived) and (when there) final.json of one
    run directory."""
    config = json.loads((path / "config.json").read_text())["config"]
    final = path / "final.json"
    failed = json.loads(final.read_text()).get("failed") if final.is_file() else None
    return RecordedRun(path, config, read_metrics(path), failed)


def load_runs(directory: str | Path) -> list[RecordedRun]:
    """The run in a run directory, or every run (by name) under a compare directory."""
    directory = Path(directory)
    if (directory / "config.json").is_file():
        return [load_run(directory)]
    runs = [load_run(p) for p in sorted(directory.glob("*/")) if has_metrics(p)]
    if not runs:
        raise ConfigError("directory", str(directory), "must be a run or compare directory")
    return runs


def varying_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The config keys whose values differ among the runs: what a comparison swept."""
    keys = dict.fromkeys(k for c in configs for k in c if k not in NOT_SETTINGS)
    return [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]


def point_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The varying keys but the seed: what tells grid points apart, while runs that differ
    only by seed (from --seeds or a swept seed key alike) are repeats of one grid point."""
    return [k for k in varying_keys(configs) if k != "seed"]


def label(config: Mapping[str, Any], keys: Sequence[str]) -> str:
    """A run's name in tables and legends: its algorithm and its values of the swept keys."""
    return " ".join(
        [str(config["algorithm"])] + [f"{k}={config.get(k)}" for k in keys if k != "algorithm"]
    )


def expand(
    base: Mapping[str, Any], grid: Mapping[str, Sequence[Any]], seeds: int = 1
) -> list[RunConfig]:
    """Every combination of the grid's values over the fixed keys in base, all checked (the
    algorithm's matrices and the partition too) before anything runs, so that a bad value
    fails now rather than after the runs before it. seeds > 1 sweeps the seed last, over
    seed, seed + 1, ..., seed + seeds - 1 from base's seed (the default 0 without one), so
    each grid point's repeats run one after the other; a grid that sweeps seed itself
    conflicts with that."""
    grid = {k.replace("_", "-"): list(v) for k, v in grid.items()}
    for key, values in grid.items():
        if key in NOT_SETTINGS:
            raise ConfigError(key, values, "set by compare for each run; not a swept key")
        if not values:
            raise ConfigError(key, values, "needs at least one value to sweep")
    fixed = {k.replace("_", "-"): v for k, v in base.items()}
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError("seeds", seeds, "a whole number of seeds per grid point, at least 1")
    if seeds > 1:
        if "seed" in grid:
            raise ConfigError(
                "seeds", seeds, f"conflicts with the swept key seed={grid['seed']}: give one"
            )
        first = RunConfig.from_mapping({k: v for k, v in fixed.items() if k == "seed"}).seed
        grid["seed"] = list(range(first, first + seeds))
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
    processes: int | None = None,
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
                processes=processes,
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
    """One summary row per run: its swept values and seed, then its FIGURES: final and best
    metrics, time to target, bytes sent and workers dropped or rejected over all rounds;
    None wherever the run's metrics lack the quantity."""
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
                "seed": run.config["seed"],
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


def grid_points(summary: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """summarize's rows grouped by grid point (rows equal in every swept key but the seed),
    in first-seen order: the point's label and swept values, n runs with their seeds and run
    names, then per figure F of FIGURES: F-mean, F-std (sample, ddof=1), F-ci95 (half-width
    of the 95% Student t interval of the mean: mean +- ci95) and F-n, the runs that have F
    (fewer than n where some never reached the target). F-std and F-ci95 are None (blank in
    CSV, null in JSON) where F-n < 2: one run says nothing about the spread."""
    skip = {"run", "label", "seed", *FIGURES}
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in summary:
        settings = {k: v for k, v in row.items() if k not in skip}
        groups.setdefault(json.dumps(settings), []).append(row)
    points = []
    for rows in groups.values():
        settings = {k: v for k, v in rows[0].items() if k not in skip}
        point = {
            "label": label(settings, list(settings)),
            **settings,
            "n": len(rows),
            "seeds": [row.get("seed") for row in rows],
            "runs": [row["run"] for row in rows],
        }
        for figure in FIGURES:
            point.update(_spread(figure, [r[figure] for r in rows if r.get(figure) is not None]))
        points.append(point)
    return points


def _spread(figure: str, values: Sequence[float]) -> dict[str, Any]:
    """A grid point's columns for one figure (see grid_points)."""
    if not values:
        return dict.fromkeys((f"{figure}-mean", f"{figure}-std", f"{figure}-ci95")) | {
            f"{figure}-n": 0
        }
    spread = stats.spread(values)
    return {
        f"{figure}-mean": spread.mean,
        f"{figure}-std": spread.std if spread.n > 1 else None,
        f"{figure}-ci95": spread.ci95 if spread.n > 1 else None,
        f"{figure}-n": spread.n,
    }


def write_summary(
    directory: Path, summary: Sequence[Mapping[str, Any]], target: float | None
) -> list[Path]:
    """summary.csv (one row per grid point: mean, std, 95% interval and n of each figure,
    empty cells for n/a), runs.csv (summarize's row per run, from which the rest follows) and
    summary.json (the target, the grid points and the runs)."""
    points = grid_points(summary)
    flat = [
        {k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in p.items()}
        for p in points
    ]
    write_csv(directory / "summary.csv", flat)
    write_csv(directory / "runs.csv", summary)
    payload = {"target-accuracy": target, "grid-points": points, "runs": list(summary)}
    (directory / "summary.json").write_text(json.dumps(payload, indent=2))
    return [directory / name for name in ("summary.csv", "runs.csv", "summary.json")]


def summary_table(summary: Sequence[Mapping[str, Any]], target: float | None) -> Table:
    """The comparison as a rich table, one row per grid point, n/a for what its runs lack.
    Where a point repeats over seeds, a cell reads mean +- 95% t half-width, then the sample
    std (and how many runs have the figure, if not all); with one run per point, the value."""
    points = grid_points(summary)
    repeated = any(point["n"] > 1 for point in points)
    goal = "n/a" if target is None else f"{target:g}"
    columns = {
        "final-accuracy": ("final acc", ".4f"),
        "best-accuracy": ("best acc", ".4f"),
        "final-test-loss": ("test loss", ".4f"),
        "final-train-loss": ("train loss", ".4f"),
        "rounds-to-target": (f"rounds to {goal}", ".1f" if repeated else ".0f"),
        "virtual-time-to-target": (f"virtual s to {goal}", ".2f"),
        "bytes-total": ("MB sent", ".3f"),
    }
    title = f"{len(summary)} runs"
    if repeated:
        title += (
            f" at {len(points)} grid points: mean ± 95% CI of the mean (Student t) over the"
            " seeds, sd = sample standard deviation"
        )
    table = Table(title=title)
    table.add_column("grid point" if repeated else "run")
    if repeated:
        table.add_column("seeds", justify="right")
    for title, _ in columns.values():
        table.add_column(title, justify="right")
    for point in points:
        cells = [_cell(point, key, spec, repeated) for key, (_, spec) in columns.items()]
        table.add_row(point["label"], *([str(point["n"])] if repeated else []), *cells)
    return table


def _cell(point: Mapping[str, Any], figure: str, spec: str, repeated: bool) -> str:
    """One figure of a grid point as summary_table writes it."""
    n, mean = point[f"{figure}-n"], point[f"{figure}-mean"]
    if mean is None:
        return "n/a"
    scale = 1e6 if figure == "bytes-total" else 1.0

    def show(value: float) -> str:
        return format(value / scale, spec)

    if not repeated:
        return show(mean)
    lines = [show(mean)]
    if n > 1:
        lines = [
            f"{show(mean)} ± {show(point[f'{figure}-ci95'])}",
            f"sd {show(point[f'{figure}-std'])}",
        ]
    if n < point["n"]:
        lines.append(f"{n} of {point['n']} runs")
    elif n == 1:
        lines.append("n=1: no sd")
    return "\n".join(lines)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (runtime, loss) points no other point beats on both (lower is better): the
    error-runtime trade-off a choice of tau can reach. NaN points are never on it."""
    valid = [(x, y) for x, y in points if not (math.isnan(x) or math.isnan(y))]
    return [
        (x, y) in valid and not any(u <= x and v <= y and (u, v) != (x, y) for u, v in valid)
        for x, y in points
    ]
