"""Every figure of a run or a comparison, drawn from its directory alone.

    fedcoop plot runs/cmp

Writes PNG and PDF under DIR/figures: loss and accuracy against rounds and against virtual
time (one line per run), the error-runtime Pareto front over tau (final test loss against
virtual time, one point per tau, per algorithm), consensus distance against rounds, and the
partition's class histogram. Figures whose metric no run recorded (virtual time, in runs
from before the virtual clock) are left out rather than drawn empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedcoop import partitions
from fedcoop.config import RunConfig
from simulations import histogram
from simulations.compare import RecordedRun, label, load_runs, pareto_front, varying_keys

#: Panels of the learning-curve figures: metric key and axis title.
_CURVES = (
    ("train-loss", "train loss"),
    ("test-loss", "test loss"),
    ("test-accuracy", "test accuracy"),
)
_AXES = {"round": "round", "virtual-time": "virtual time (s)"}


def plot_directory(directory: str | Path) -> list[Path]:
    """Draw every figure of a run or compare directory into its figures/ folder."""
    directory = Path(directory)
    runs = load_runs(directory)
    keys = varying_keys([r.config for r in runs])
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


def curves(runs: Sequence[RecordedRun], labels: Sequence[str], x_key: str) -> Figure | None:
    """Loss and accuracy against `x_key`, one line per run; None if no run recorded x_key."""
    drawn = [(r, name) for r, name in zip(runs, labels, strict=True) if r.column(x_key)]
    metrics = [(k, t) for k, t in _CURVES if any(r.column(k) for r, _ in drawn)]
    if not drawn or not metrics:
        return None
    figure, axes = new_figure(len(metrics))
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for run, name in drawn:
            if run.column(key):
                ax.plot(run.column(x_key), run.column(key), marker=".", label=name)
        style_axes(ax, _AXES[x_key], title)
    axes[-1].legend(fontsize="small")
    return figure


def consensus(runs: Sequence[RecordedRun], labels: Sequence[str]) -> Figure | None:
    """Consensus distance (1/m) sum ||x_i - mean x||^2 against rounds, log scale."""
    drawn = [
        (r, name) for r, name in zip(runs, labels, strict=True) if r.column("consensus-distance")
    ]
    if not drawn:
        return None
    figure, (ax,) = new_figure(1)
    for run, name in drawn:
        ax.plot(run.column("round"), run.column("consensus-distance"), marker=".", label=name)
    if all(v > 0 for run, _ in drawn for v in run.column("consensus-distance")):
        ax.set_yscale("log")
    style_axes(ax, "round", "consensus distance")
    ax.legend(fontsize="small")
    return figure


def pareto(runs: Sequence[RecordedRun], group_keys: Sequence[str]) -> Figure | None:
    """Final test loss against virtual time, one point per run labelled by tau, one series per
    group of runs that differ only in tau (the algorithm and other swept keys); each series'
    non-dominated points are filled and joined. None without a virtual clock."""
    timed = [r for r in runs if r.column("virtual-time") and r.column("test-loss")]
    if not timed:
        return None
    groups: dict[str, list[RecordedRun]] = {}
    for run in timed:
        groups.setdefault(label(run.config, group_keys), []).append(run)
    figure, (ax,) = new_figure(1)
    for name, members in groups.items():
        points = np.array([(r.rows[-1]["virtual-time"], r.rows[-1]["test-loss"]) for r in members])
        front = np.array(pareto_front([tuple(p) for p in points]))
        best = points[front][np.argsort(points[front, 0])]
        (line,) = ax.plot(best[:, 0], best[:, 1], marker="o", label=name)
        ax.scatter(*points[~front].T, facecolors="none", edgecolors=line.get_color())
        for (x, y), run in zip(points, members, strict=True):
            ax.annotate(
                f"tau={run.config['tau']}",
                (x, y),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize="x-small",
            )
    style_axes(ax, "virtual time (s)", "final test loss")
    ax.set_title("error-runtime front over tau (filled: non-dominated)", fontsize="medium")
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
