"""fedcoop plot: every figure from a results directory alone, written by hand here, so the
figures depend on nothing but the files (and show n/a, not an error, for missing metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def test_every_figure_of_a_compare_directory(tmp_path: Path) -> None:
    for algorithm in ("local-sgd", "overlap"):
        for tau in (1, 2, 4):
            write_run(
                tmp_path,
                f"{algorithm}-{tau}",
                rows(tau, timed=True),
                **DATA,
                algorithm=algorithm,
                tau=tau,
            )
    names = {"rounds", "virtual-time", "pareto", "consensus", "partition"}
    assert figures(tmp_path) == {f"{n}.{s}" for n in names for s in ("png", "pdf")}


def test_runs_without_a_virtual_clock_leave_its_figures_out(tmp_path: Path) -> None:
    for tau in (1, 2):
        write_run(tmp_path, f"run-{tau}", rows(tau, timed=False), **DATA, tau=tau)
    assert figures(tmp_path) == {
        f"{n}.{s}" for n in ("rounds", "consensus", "partition") for s in ("png", "pdf")
    }


def test_a_single_run_directory_and_regression_data(tmp_path: Path) -> None:
    run = [{k: v for k, v in r.items() if k != "test-accuracy"} for r in rows(2, timed=True)]
    path = write_run(tmp_path, "run", run, dataset="least-squares", model="linear")
    assert figures(path) == {
        f"{n}.{s}"
        for n in ("rounds", "virtual-time", "pareto", "consensus")
        for s in ("png", "pdf")
    }


def test_one_histogram_per_distinct_split(tmp_path: Path) -> None:
    write_run(tmp_path, "a", rows(1, timed=False), **DATA)
    write_run(tmp_path, "b", rows(1, timed=False), **{**DATA, "seed": 1})
    assert {n for n in figures(tmp_path) if n.startswith("partition")} == {
        "partition.png",
        "partition.pdf",
        "partition-b.png",
        "partition-b.pdf",
    }
