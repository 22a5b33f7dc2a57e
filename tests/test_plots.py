"""fedcoop plot: every figure from a results directory alone, written by hand here, so the
figures depend on nothing but the files (and show n/a, not an error, for missing metrics)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from simulations import compare, plots
from tests.conftest import write_run

#: The embedded MNIST split, so that the partition histogram has classes to draw.
DATA = dict(dataset="mnist-embedded", model="logreg", num_clients=4, partition="iid")


def rows(tau: int, *, timed: bool) -> list[dict[str, Any]]:
    """Three rounds of plausible metrics; a larger tau costs fewer virtual seconds here."""
    out = []
    for r in (1, 2, 3):
        row = {
            "round": r,
            "train-loss": 2.0 / r + tau / 10,
            "test-loss": 2.1 / r + tau / 10,
            "test-accuracy": 0.3 * r - tau / 100,
            "consensus-distance": 0.1 * tau / r,
        }
        out.append({**row, "virtual-time": r * 10.0 / tau} if timed else row)
    return out


def figures(directory: Path) -> set[str]:
    written = plots.plot_directory(directory)
    assert all(p.parent == directory / "figures" and p.stat().st_size > 0 for p in written)
    return {p.name for p in written}


def in_both_formats(*names: str) -> set[str]:
    """The file names of the figures `names`, each written as PNG and as PDF."""
    return {f"{n}.{s}" for n in names for s in ("png", "pdf")}


def compare_directory(root: Path) -> Path:
    """What fedcoop compare leaves: two algorithms x three tau, on a virtual clock."""
    for algorithm in ("local-sgd", "overlap"):
        for tau in (1, 2, 4):
            write_run(
                root,
                f"{algorithm}-{tau}",
                rows(tau, timed=True),
                **DATA,
                algorithm=algorithm,
                tau=tau,
            )
    return root


def untimed_runs(root: Path) -> Path:
    """Two runs without a virtual clock."""
    for tau in (1, 2):
        write_run(root, f"run-{tau}", rows(tau, timed=False), **DATA, tau=tau)
    return root


def regression_run(root: Path) -> Path:
    """A single run directory, on a regression data set (no accuracy, no classes)."""
    run = [{k: v for k, v in r.items() if k != "test-accuracy"} for r in rows(2, timed=True)]
    return write_run(root, "run", run, dataset="least-squares", model="linear")


@pytest.mark.parametrize(
    ("write", "names"),
    [
        (compare_directory, ("rounds", "virtual-time", "pareto", "consensus", "partition")),
        (untimed_runs, ("rounds", "consensus", "partition")),  # no virtual-clock figures
        (regression_run, ("rounds", "virtual-time", "pareto", "consensus")),
    ],
    ids=["compare-directory", "no-virtual-clock", "single-regression-run"],
)
def test_every_figure_the_files_allow_and_no_other(
    tmp_path: Path, write: Callable[[Path], Path], names: tuple[str, ...]
) -> None:
    assert figures(write(tmp_path)) == in_both_formats(*names)


def test_one_histogram_per_distinct_split(tmp_path: Path) -> None:
    write_run(tmp_path, "a", rows(1, timed=False), **DATA)
    write_run(tmp_path, "b", rows(1, timed=False), **{**DATA, "seed": 1})
    assert {n for n in figures(tmp_path) if n.startswith("partition")} == in_both_formats(
        "partition", "partition-b"
    )


def _bands(figure: Figure) -> list[list[PolyCollection]]:
    """The shaded bands (fill_between) on each axes of a figure."""
    return [[c for c in ax.collections if isinstance(c, PolyCollection)] for ax in figure.axes]


def test_seeds_of_a_grid_point_are_drawn_as_mean_and_band(tmp_path: Path) -> None:
    """Three seeds of tau=1 (offset by 0, 0.1, 0.2) become one mean line with a +-1 std band;
    tau=2, with one seed, stays a plain line."""
    for seed, shift in enumerate((0.0, 0.1, 0.2)):
        shifted = [
            {k: v + shift if k not in ("round", "virtual-time") else v for k, v in row.items()}
            for row in rows(1, timed=True)
        ]
        write_run(tmp_path, f"a-{seed}", shifted, **DATA, tau=1, seed=seed)
    write_run(tmp_path, "b", rows(2, timed=True), **DATA, tau=2)
    runs = compare.load_runs(tmp_path)
    labels = [compare.label(r.config, compare.point_keys([r.config for r in runs])) for r in runs]
    figure = plots.curves(runs, labels, "round")
    assert figure is not None and "± 1 sample std" in figure.get_suptitle()
    assert [len(bands) for bands in _bands(figure)] == [1, 1, 1]
    loss_axes = figure.axes[0]
    mean, single = loss_axes.get_lines()
    plain = [r["train-loss"] for r in rows(1, timed=True)]
    np.testing.assert_allclose(mean.get_ydata(), np.array(plain) + 0.1)
    assert mean.get_label() == "local-sgd tau=1 (mean ± 1 sd, 3 seeds)"
    assert single.get_label() == "local-sgd tau=2"
    (band,) = _bands(figure)[0]
    low, high = band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max()
    assert low == pytest.approx(min(plain)) and high == pytest.approx(max(plain) + 0.2)
    pareto = plots.pareto(runs, [])
    assert pareto is not None and len(pareto.axes[0].containers) == 1  # the seeds' error bars
    assert "± 1 sample std" in pareto.axes[0].get_title()
    assert {"rounds.png", "virtual-time.png", "pareto.png", "consensus.png"} <= figures(tmp_path)


def test_single_seed_runs_are_drawn_without_a_band(tmp_path: Path) -> None:
    for tau in (1, 2):
        write_run(tmp_path, f"run-{tau}", rows(tau, timed=True), **DATA, tau=tau)
    runs = compare.load_runs(tmp_path)
    labels = [compare.label(r.config, ["tau"]) for r in runs]
    for x_key in ("round", "virtual-time"):
        figure = plots.curves(runs, labels, x_key)
        assert figure is not None and figure.get_suptitle() == ""
        assert _bands(figure) == [[], [], []]
        assert [len(ax.get_lines()) for ax in figure.axes] == [2, 2, 2]
    consensus = plots.consensus(runs, labels)
    assert consensus is not None and _bands(consensus) == [[]]
    pareto = plots.pareto(runs, [])
    assert pareto is not None and pareto.axes[0].containers == []
