"""fedcoop compare: the sweep, the summary read back from the run files, time to target, and
the Pareto front, on tiny in-process runs and hand-written metrics files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcoop import workload
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError
from simulations import cli, compare
from tests.conftest import write_run

TINY = [
    "dataset=mnist-embedded",
    "model=logreg",
    "num-clients=4",
    "num-rounds=2",
    "batch-size=8",
    "partition=skewed",
    "major-fraction=0.3",
]


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real comparison: two algorithms x two tau, through the in-process engine."""
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    grid = ["--grid", "algorithm=local-sgd,overlap", "--grid", "tau=1,3"]
    cli.main(
        [
            "compare",
            *TINY,
            *grid,
            "--target",
            "0.3",
            "--out",
            str(out),
            "--engine",
            "inprocess",
            "--quiet",
        ]
    )
    return out


def test_compare_summary_rows_are_the_runs_metrics(compared: Path) -> None:
    summary = json.loads((compared / "summary.json").read_text())
    assert summary["target-accuracy"] == 0.3
    rows = summary["runs"]
    assert sorted((r["algorithm"], r["tau"]) for r in rows) == [
        ("local-sgd", 1),
        ("local-sgd", 3),
        ("overlap", 1),
        ("overlap", 3),
    ]
    for row in rows:
        run = compare.load_run(compared / row["run"])
        accuracy = [r["test-accuracy"] for r in run.rows]
        assert row["rounds"] == len(run.rows) == 2
        assert row["best-accuracy"] == max(accuracy)
        assert row["final-accuracy"] == accuracy[-1]
        assert row["final-test-loss"] == run.rows[-1]["test-loss"]
        assert row["final-train-loss"] == run.rows[-1]["train-loss"]
        assert row["bytes-total"] == sum(r["bytes-up"] + r["bytes-down"] for r in run.rows) > 0
        assert row["dropped"] == sum(r.get("dropped", 0) for r in run.rows) == 0
        assert row["virtual-time"] == run.rows[-1]["virtual-time"] > 0
        reached = [r for r in run.rows if r["test-accuracy"] >= 0.3]
        assert row["rounds-to-target"] == (reached[0]["round"] if reached else None)
        assert row["virtual-time-to-target"] == (reached[0]["virtual-time"] if reached else None)
    csv_lines = (compared / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("run,label,algorithm,tau,") and len(csv_lines) == 5


def test_compared_runs_share_one_partition(compared: Path) -> None:
    runs = compare.load_runs(compared)
    configs = [RunConfig.from_mapping(r.config) for r in runs]
    assert {c.seed for c in configs} == {0} and {c.partition for c in configs} == {"skewed"}
    splits = []
    for c in configs:  # each split computed afresh from its run's config, not from a cache
        workload.clear_caches()
        splits.append(workload.partition_indices(c, c.num_clients))
    for split in splits[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(split, splits[0], strict=True))


def test_compare_plots_from_its_files(compared: Path) -> None:
    for name in ("rounds", "virtual-time", "pareto", "consensus", "partition"):
        for suffix in ("png", "pdf"):
            assert (compared / "figures" / f"{name}.{suffix}").stat().st_size > 0


def test_compare_refuses_a_used_directory(compared: Path) -> None:
    with pytest.raises(ConfigError, match="out"):
        compare.sweep([RunConfig()], compared)


def test_time_to_target_from_hand_written_metrics(tmp_path: Path) -> None:
    timed = [
        {"round": 1, "test-accuracy": 0.5, "test-loss": 1.0, "virtual-time": 2.0},
        {"round": 2, "test-accuracy": 0.9, "test-loss": 0.5, "virtual-time": 4.5},
        {"round": 3, "test-accuracy": 0.8, "test-loss": 0.6, "virtual-time": 7.0},
    ]
    untimed = [{k: v for k, v in r.items() if k != "virtual-time"} for r in timed]
    write_run(tmp_path, "a-timed", timed)
    write_run(tmp_path, "b-untimed", untimed, tau=2)
    write_run(tmp_path, "c-regression", [{"round": 1, "test-loss": 3.0}], tau=3)
    runs = compare.load_runs(tmp_path)
    assert compare.time_to_target(timed, 0.85) == (2, 4.5)
    assert compare.time_to_target(timed, 0.95) == (None, None)
    assert compare.time_to_target(timed, None) == (None, None)
    assert compare.time_to_target(untimed, 0.85) == (2, None)
    summary = compare.summarize(runs, 0.85)
    assert [r["label"] for r in summary] == [
        "local-sgd tau=4",
        "local-sgd tau=2",
        "local-sgd tau=3",
    ]
    assert summary[0]["virtual-time"] == 7.0 and summary[0]["best-accuracy"] == 0.9
    assert summary[1]["virtual-time-to-target"] is None and summary[1]["rounds-to-target"] == 2
    assert summary[2]["best-accuracy"] is None and summary[2]["rounds-to-target"] is None
    assert summary[2]["bytes-total"] is None and summary[2]["dropped"] is None
    table = compare.summary_table(summary, 0.85)
    cells = [list(column.cells) for column in table.columns]
    assert cells[6] == ["4.50", "n/a", "n/a"] and cells[5] == ["2", "2", "n/a"]


def test_pareto_front_on_hand_made_points() -> None:
    points = [(1.0, 5.0), (2.0, 3.0), (3.0, 3.0), (4.0, 1.0), (4.0, 2.0), (2.0, 3.0)]
    assert compare.pareto_front(points) == [True, True, False, True, False, True]
    assert compare.pareto_front([(math.nan, 0.0), (1.0, 1.0)]) == [False, True]
    assert compare.pareto_front([]) == []


def test_expand_is_the_cartesian_product_over_the_fixed_keys() -> None:
    configs = compare.expand(
        {"num-rounds": 3, "decay-epochs": "10,20"},
        {"algorithm": ["overlap", "cocod", "local-sgd"], "tau": [2, 8]},
    )
    assert [(c.algorithm, c.tau) for c in configs] == [
        (a, t) for a in ("overlap", "cocod", "local-sgd") for t in (2, 8)
    ]
    assert {(c.num_rounds, c.decay_epochs) for c in configs} == {(3, "10,20")}


@pytest.mark.parametrize(
    ("grid", "key"),
    [
        ({"taux": [1, 2]}, "taux"),
        ({"tau": [2, 0]}, "tau"),
        ({"algorithm": ["overlap", "nope"]}, "algorithm"),
        ({"results-dir": ["a", "b"]}, "results-dir"),
        ({"tau": []}, "tau"),
    ],
)
def test_expand_names_the_bad_key(grid: dict[str, list[Any]], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        compare.expand({"results-dir": ""}, grid)
    assert error.value.parameter == key


def test_a_bad_link_in_the_grid_is_refused_before_any_run() -> None:
    with pytest.raises(ConfigError) as error:
        compare.expand({}, {"link": ["wifi", "bogus"]})
    assert error.value.parameter == "link" and error.value.value == "bogus"
