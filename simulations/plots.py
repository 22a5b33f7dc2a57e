"""Every figure of a run or a comparison, drawn from its directory alone.

    fedcoop plot runs/cmp

Writes PNG and PDF under DIR/figures: loss and accuracy against rounds and against virtual
time (one line per run), the error-runtime Pareto front over tau (final test loss against
virtual time, one point per tau, per algorithm), consensus distance against rounds, and the
partition's class histogram. Runs that differ only by seed (compare --seeds) are one grid
point: its curves are the mean over the seeds with a shaded band of +-1 sample standard
deviation, its Pareto points the mean with +-1 std error bars; a point with one seed is
drawn as its run. Figures whose metric no run recorded (virtual time, in runs from before
the virtual clock) are left out rather than drawn empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fedcoop import partitions
from fedcoop.config import RunConfig
from simulations import histogram
from simulations.compare import RecordedRun, label, load_runs, pareto_front, point_keys

#: Panels of the learning-curve figures: metric key and axis title.
_CURVES = (
    ("train-loss", "train loss"),
    ("test-loss", "test loss"),
    ("test-accuracy", "test accuracy"),
    ("local-test-accuracy", "workers' own models: test accuracy"),
)
_AXES = {"round": "round", "virtual-time": "virtual time (s)"}
#: What a shaded band is, for the figures' titles.
_BAND = "lines: mean over seeds, shaded: ± 1 sample std"


def plot_directory(directory: str | Path) -> list[Path]:
    """Draw every figure of a run or compare directory into its figures/ folder."""
    directory = Path(directory)
    runs = load_runs(directory)
    keys = point_keys([r.config for r in runs])
    labels = [label(r.config, keys) for r in runs]
    figures = {
        "rounds": curves(runs, labels, "round"),
        "virtual-time": curves(runs, labels, "virtual-time"),
        "pareto": pareto(runs, [k for k in keys if k != "tau"]),
        "consensus": consensus(runs, labels),
    }
    out = directory / "figures"
    written = [path for name, fig in figures.items() if fig for path in save(fig, out / name)]
    return written + partition_histograms(runs, out)


def save(
    figure: Figure, stem: Path, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150
) -> list[Path]:
    """Write `figure` as stem.png and stem.pdf (or the `formats` given)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(f".{suffix}") for suffix in formats]
    for path in paths:
        figure.savefig(path, dpi=dpi)
    return paths


def new_figure(panels: int) -> tuple[Figure, list[Axes]]:
    """A figure on an Agg canvas (no display, no pyplot state) with `panels` side by side."""
    figure = Figure(figsize=(4.2 * panels + 0.6, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, list(np.atleast_1d(figure.subplots(1, panels)))


def style_axes(ax: Axes, xlabel: str, ylabel: str) -> None:
    """Axis titles and a light grid; whole numbers only on a round axis."""
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if xlabel == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def series(
    runs: Sequence[RecordedRun], labels: Sequence[str], *keys: str
) -> dict[str, list[RecordedRun]]:
    """The runs that recorded every one of `keys`, by label in first-seen order: one series
    per label, so runs that share one (the seeds of a grid point) are drawn together."""
    grouped: dict[str, list[RecordedRun]] = {}
    for run, name in zip(runs, labels, strict=True):
        if all(run.column(k) for k in keys):
            grouped.setdefault(name, []).append(run)
    return grouped


def draw_series(
    ax: Axes, members: Sequence[RecordedRun], x_key: str, y_key: str, name: str
) -> bool:
    """One series: a run's line, or for several runs the mean over them at each round (x the
    mean x, rounds up to the shortest run) with a band of +-1 sample std; True if banded."""
    if len(members) == 1:
        ax.plot(members[0].column(x_key), members[0].column(y_key), marker=".", label=name)
        return False
    length = min(len(r.rows) for r in members)
    x = np.mean([r.column(x_key)[:length] for r in members], axis=0)
    y = [r.column(y_key)[:length] for r in members]
    band(ax, x, y, f"{name} (mean ± 1 sd, {len(members)} seeds)", marker=".")
    return True


def band(
    ax: Axes, x: Sequence[float], y: Sequence[Sequence[float]], name: str, **style: Any
) -> Line2D:
    """The mean of y's rows (one per seed, each over x) as a line with a shaded band of +-1
    sample std (no band for one row, which says nothing about the spread); its line."""
    values = np.asarray(y, dtype=float)
    mean = values.mean(axis=0)
    (line,) = ax.plot(x, mean, label=name, **style)
    if len(values) > 1:
        std = values.std(axis=0, ddof=1)
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def curves(runs: Sequence[RecordedRun], labels: Sequence[str], x_key: str) -> Figure | None:
    """Loss and accuracy against `x_key`, one series per label (see draw_series); None if no
    run recorded x_key."""
    drawn = series(runs, labels, x_key)
    metrics = [(k, t) for k, t in _CURVES if any(r.column(k) for g in drawn.values() for r in g)]
    if not drawn or not metrics:
        return None
    figure, axes = new_figure(len(metrics))
    banded = False
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for name, members in series(runs, labels, x_key, key).items():
            banded |= draw_series(ax, members, x_key, key, name)
        style_axes(ax, _AXES[x_key], title)
    axes[-1].legend(fontsize="small")
    if banded:
        figure.suptitle(_BAND, fontsize="medium")
    return figure


def consensus(runs: Sequence[RecordedRun], labels: Sequence[str]) -> Figure | None:
    """Consensus distance (1/m) sum ||x_i - mean x||^2 against rounds, log scale."""
    drawn = series(runs, labels, "round", "consensus-distance")
    if not drawn:
        return None
    figure, (ax,) = new_figure(1)
    banded = False
    for name, members in drawn.items():
        banded |= draw_series(ax, members, "round", "consensus-distance", name)
    if all(v > 0 for g in drawn.values() for r in g for v in r.column("consensus-distance")):
        ax.set_yscale("log")
    style_axes(ax, "round", "consensus distance")
    ax.legend(fontsize="small")
    if banded:
        ax.set_title(_BAND, fontsize="medium")
    return figure


def pareto(runs: Sequence[RecordedRun], group_keys: Sequence[str]) -> Figure | None:
    """Final test loss against virtual time, one point per tau labelled by it, one series per
    group of runs that differ only in tau and seed (the algorithm and other swept keys);
    each series' non-dominated points are filled and joined. A tau with several seeds is
    their mean, with +-1 sample std error bars on both axes. None without a virtual clock."""
    timed = [r for r in runs if r.column("virtual-time") and r.column("test-loss")]
    if not timed:
        return None
    groups: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for run in timed:
        by_tau = groups.setdefault(label(run.config, group_keys), {})
        by_tau.setdefault(run.config["tau"], []).append(
            (run.rows[-1]["virtual-time"], run.rows[-1]["test-loss"])
        )
    figure, (ax,) = new_figure(1)
    repeated = False
    for name, by_tau in groups.items():
        finals = [np.array(f) for f in by_tau.values()]
        points = np.array([f.mean(axis=0) for f in finals])
        front = np.array(pareto_front([tuple(p) for p in points]))
        best = points[front][np.argsort(points[front, 0])]
        (line,) = ax.plot(best[:, 0], best[:, 1], marker="o", label=name)
        ax.scatter(*points[~front].T, facecolors="none", edgecolors=line.get_color())
        if any(len(f) > 1 for f in finals):
            sd = np.array([f.std(axis=0, ddof=1) if len(f) > 1 else (0.0, 0.0) for f in finals])
            ax.errorbar(
                *points.T, xerr=sd[:, 0], yerr=sd[:, 1], fmt="none", ecolor=line.get_color()
            )
            repeated = True
        for (x, y), tau in zip(points, by_tau, strict=True):
            ax.annotate(
                f"tau={tau}", (x, y), xytext=(4, 4), textcoords="offset points", fontsize="x-small"
            )
    style_axes(ax, "virtual time (s)", "final test loss")
    title = "error-runtime front over tau (filled: non-dominated)"
    ax.set_title(
        title + ("\nmean over seeds, bars: ± 1 sample std" if repeated else ""), fontsize="medium"
    )
    ax.legend(fontsize="small")
    return figure


def partition_histograms(runs: Sequence[RecordedRun], out: Path) -> list[Path]:
    """The class histogram of each distinct split the runs trained on (one when only
    algorithms or tau were swept), as PNG and PDF; none for regression data (no classes)."""
    written: list[Path] = []
    seen: list[np.ndarray] = []
    for run in runs:
        config = RunConfig.from_mapping(run.config)
        hist = histogram.class_counts(config)
        if hist is None or any(np.array_equal(hist, h) for h in seen):
            continue
        seen.append(hist)
        name = "partition" if len(seen) == 1 else f"partition-{run.path.name}"
        written += [
            partitions.plot_histogram(hist, out / f"{name}.{fmt}", histogram.title(config))
            for fmt in ("png", "pdf")
        ]
    return written
