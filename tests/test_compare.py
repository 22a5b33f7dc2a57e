"""fedcoop compare: the sweep, the summary read back from the run files, time to target, and
the Pareto front, on tiny in-process runs and hand-written metrics files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedcoop import workload
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError
from simulations import cli, compare, stats
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


#: The 0.975 quantile of Student's t with 2 degrees of freedom, in closed form.
T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)


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
    csv_lines = (compared / "runs.csv").read_text().splitlines()
    assert csv_lines[0].startswith("run,label,algorithm,tau,seed,") and len(csv_lines) == 5
    csv_lines = (compared / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("label,algorithm,tau,n,seeds,runs,") and len(csv_lines) == 5
    assert [p["runs"] for p in summary["grid-points"]] == [[r["run"]] for r in rows]


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


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fedcoop compare --seeds 3 over tau = 1, 2 of a tiny least-squares problem, in process."""
    out = tmp_path_factory.mktemp("seeded") / "cmp"
    problem = ["dataset=least-squares", "model=linear", "num-clients=2", "num-rounds=2"]
    grid = ["--grid", "tau=1,2", "--seeds", "3"]
    cli.main(["compare", *problem, *grid, "--out", str(out), "--engine", "inprocess", "--quiet"])
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1), written out."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_seeds_give_each_grid_point_three_runs_and_their_spread(seeded: Path) -> None:
    summary = json.loads((seeded / "summary.json").read_text())
    points = summary["grid-points"]
    assert [(p["label"], p["tau"], p["n"], sorted(p["seeds"])) for p in points] == [
        ("local-sgd tau=1", 1, 3, [0, 1, 2]),
        ("local-sgd tau=2", 2, 3, [0, 1, 2]),
    ]
    assert len(summary["runs"]) == 6 and len(list(seeded.glob("*/metrics.jsonl"))) == 6
    for point in points:
        runs = [compare.load_run(seeded / name) for name in point["runs"]]
        assert sorted(r.config["seed"] for r in runs) == [0, 1, 2]
        assert {r.config["tau"] for r in runs} == {point["tau"]}
        read_back = {
            "final-test-loss": [r.rows[-1]["test-loss"] for r in runs],
            "final-train-loss": [r.rows[-1]["train-loss"] for r in runs],
            "virtual-time": [r.rows[-1]["virtual-time"] for r in runs],
            "bytes-total": [sum(x["bytes-up"] + x["bytes-down"] for x in r.rows) for r in runs],
        }
        for figure, values in read_back.items():
            mean, std = _mean_std(values)
            assert point[f"{figure}-n"] == 3
            assert point[f"{figure}-mean"] == pytest.approx(mean, rel=1e-12)
            assert point[f"{figure}-std"] == pytest.approx(std, rel=1e-9, abs=1e-12)
            ci95 = T975_DF2 * std / math.sqrt(3)
            assert point[f"{figure}-ci95"] == pytest.approx(ci95, rel=1e-6, abs=1e-12)
        assert point["final-test-loss-std"] > 0  # the seeds gave different runs
        # Regression data has no accuracy: no mean, no spread, no runs counted.
        assert point["final-accuracy-n"] == 0 and point["final-accuracy-mean"] is None
    assert len((seeded / "runs.csv").read_text().splitlines()) == 7
    with (seeded / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [row["seeds"] for row in table] == [" ".join(map(str, p["seeds"])) for p in points]
    for row, point in zip(table, points, strict=True):
        for column in ("final-test-loss-mean", "final-test-loss-std", "final-test-loss-ci95"):
            assert float(row[column]) == pytest.approx(point[column])
        assert row["final-accuracy-mean"] == row["final-accuracy-std"] == ""


def test_the_table_of_seeded_runs_gives_mean_ci_and_sd(seeded: Path) -> None:
    summary = json.loads((seeded / "summary.json").read_text())
    table = compare.summary_table(summary["runs"], None)
    cells = {column.header: list(column.cells) for column in table.columns}
    assert "95% CI" in str(table.title) and cells["seeds"] == ["3", "3"]
    point = summary["grid-points"][0]
    mean, ci, sd = (point[f"final-test-loss-{s}"] for s in ("mean", "ci95", "std"))
    assert cells["test loss"][0] == f"{mean:.4f} ± {ci:.4f}\nsd {sd:.4f}"
    assert cells["final acc"] == ["n/a", "n/a"]


def test_grid_points_of_hand_written_seeds_with_a_partly_reached_target(tmp_path: Path) -> None:
    """Three seeds of one point, two of which reach the target, and a point with one run."""
    accuracy = {0: [0.5, 0.9], 1: [0.4, 0.6], 2: [0.85, 0.95]}
    for seed, values in accuracy.items():
        rows = [{"round": r, "test-accuracy": a} for r, a in enumerate(values, 1)]
        write_run(tmp_path, f"a-{seed}", rows, seed=seed)
    write_run(tmp_path, "b", [{"round": 1, "test-accuracy": 0.9}], tau=2)
    summary = compare.summarize(compare.load_runs(tmp_path), 0.85)
    assert set(compare.FIGURES) <= set(summary[0])
    a, b = compare.grid_points(summary)
    assert (a["label"], a["n"], a["seeds"], b["label"], b["n"]) == (
        "local-sgd tau=4",
        3,
        [0, 1, 2],
        "local-sgd tau=2",
        1,
    )
    mean, std = _mean_std([0.9, 0.6, 0.95])
    assert a["final-accuracy-mean"] == pytest.approx(mean)
    assert a["final-accuracy-std"] == pytest.approx(std)
    assert a["final-accuracy-ci95"] == pytest.approx(stats.t975(2) * std / math.sqrt(3))
    # Seeds 0 and 2 reach 0.85 at rounds 2 and 1; seed 1 never: two runs, t with 1 df.
    assert (a["rounds-to-target-n"], a["rounds-to-target-mean"]) == (2, 1.5)
    assert a["rounds-to-target-std"] == pytest.approx(math.sqrt(0.5))
    assert a["rounds-to-target-ci95"] == pytest.approx(12.706205 * math.sqrt(0.5) / math.sqrt(2))
    # One run: its value, and no spread (None, not 0).
    assert (b["final-accuracy-mean"], b["final-accuracy-n"]) == (0.9, 1)
    assert b["final-accuracy-std"] is None and b["final-accuracy-ci95"] is None
    cells = {c.header: list(c.cells) for c in compare.summary_table(summary, 0.85).columns}
    assert cells["seeds"] == ["3", "1"]
    assert cells["rounds to 0.85"][0] == "1.5 ± 6.4\nsd 0.7\n2 of 3 runs"
    assert cells["final acc"][1] == "0.9000\nn=1: no sd"
    written = compare.write_summary(tmp_path, summary, 0.85)
    assert [p.name for p in written] == ["summary.csv", "runs.csv", "summary.json"]
    with (tmp_path / "summary.csv").open() as f:
        single = list(csv.DictReader(f))[1]
    assert single["final-accuracy-mean"] == "0.9" and single["final-accuracy-std"] == ""


def test_seeds_sweep_the_seed_last_from_the_configs_seed() -> None:
    configs = compare.expand({"seed": 5}, {"tau": [1, 2]}, seeds=3)
    assert [(c.tau, c.seed) for c in configs] == [(t, s) for t in (1, 2) for s in (5, 6, 7)]
    assert [c.seed for c in compare.expand({}, {}, seeds=2)] == [0, 1]
    assert [c.seed for c in compare.expand({}, {"seed": [3, 9]})] == [3, 9]


@pytest.mark.parametrize("seeds", [0, -1, 2.5, "3", True])
def test_seeds_must_be_a_positive_whole_number(seeds: Any) -> None:
    with pytest.raises(ConfigError) as error:
        compare.expand({}, {}, seeds=seeds)
    assert error.value.parameter == "seeds"


def test_seeds_conflict_with_a_swept_seed_key() -> None:
    with pytest.raises(ConfigError) as error:
        compare.expand({}, {"seed": [0, 1]}, seeds=2)
    assert error.value.parameter == "seeds" and "seed=[0, 1]" in str(error.value)
