"""fedcoop plot: every figure from a results directory alone, written by hand here, so the
figures depend on nothing but the files (and show n/a, not an error, for missing metrics)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulations import plots
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
