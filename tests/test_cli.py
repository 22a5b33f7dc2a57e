"""The fedcoop command line: how compare tells swept keys from fixed ones, its TOML file, and
exit code 2 with the bad key named for every refused key or value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedcoop.errors import RunFailed
from simulations import cli
from simulations.runner import run_config
from tests.conftest import least_squares_config

LEAST_SQUARES = ["dataset=least-squares", "model=linear", "num-clients=2", "num-rounds=2"]


def test_grid_values_split_on_commas_or_read_a_toml_array() -> None:
    assert cli._grid_values("2,8") == [2, 8]
    assert cli._grid_values("overlap,local-sgd") == ["overlap", "local-sgd"]
    assert cli._grid_values('["150,250", "100,200"]') == ["150,250", "100,200"]
    assert cli._value('"150,250"') == "150,250" and cli._value("true") is True


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["run", "taux=2"], "taux"),
        (["run", "tau"], "argument"),
        (["compare", "--grid", "tau=2,zero"], "tau"),
        (["compare", "--grid", "topologyy=ring,torus"], "topologyy"),
        (["compare", "--grid", "algorithm=overlap,bogus"], "algorithm"),
        (["compare", "lr=-1", "--grid", "tau=1,2"], "lr"),
        (["compare", "--target", "1.5"], "target"),
        (["plot", "/nonexistent/fedcoop-runs"], "directory"),
        (["run", "--engine", "inprocess", "--ray-address", "127.0.0.1:6379"], "ray-address"),
        (["run", "--ray-address", " "], "ray-address"),
    ],
)
def test_refused_input_exits_2_naming_the_key(
    argv: list[str], key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert f"error: {key}=" in capsys.readouterr().err


def test_compare_reads_grid_and_options_from_its_toml_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    config = tmp_path / "compare.toml"
    config.write_text(
        f"""
        dataset = "least-squares"
        model = "linear"
        num-clients = 2
        num-rounds = 2
        [grid]
        algorithm = ["local-sgd", "easgd"]
        tau = [1, 2]
        [compare]
        out = "{out}"
        engine = "inprocess"
        quiet = true
        """
    )
    cli.main(["compare", "--config", str(config), "--grid", "tau=3"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target-accuracy"] is None
    assert sorted((r["algorithm"], r.get("tau", 3)) for r in summary["runs"]) == [
        ("easgd", 3),
        ("local-sgd", 3),
    ]
    assert all(r["rounds-to-target"] is None for r in summary["runs"])
    assert "n/a" in capsys.readouterr().out


def test_compare_refuses_unknown_options_in_its_toml_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "compare.toml"
    config.write_text("[compare]\ntargett = 0.9\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", "--config", str(config)])
    assert exit_.value.code == 2 and "compare.targett=" in capsys.readouterr().err


def test_compare_refuses_a_ray_address_off_the_simulation_engine_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    config = tmp_path / "compare.toml"
    config.write_text(
        f'dataset = "least-squares"\nmodel = "linear"\n[grid]\ntau = [1, 2]\n'
        f'[compare]\nout = "{out}"\nengine = "vectorized"\nray-address = "auto"\n'
    )
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", "--config", str(config)])
    assert exit_.value.code == 2
    assert "error: ray-address='auto' is invalid: needs engine simulation" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def test_the_ray_address_reaches_rays_init_through_flowers_backend_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What Flower's Ray backend passes to ray.init is its backend config's init_args; the
    cluster run itself is tests/test_ray_cluster.py (slow)."""
    import flwr.simulation

    seen: list[dict] = []
    monkeypatch.setattr(
        flwr.simulation, "run_simulation", lambda **kwargs: seen.append(kwargs["backend_config"])
    )
    config = least_squares_config(num_clients=2, num_rounds=1)
    with pytest.raises(RunFailed, match="did not finish"):
        run_config(config, engine="simulation", ray_address="10.0.0.7:6379", gpus_per_client=0)
    with pytest.raises(RunFailed):
        run_config(config, engine="simulation", gpus_per_client=0)
    assert [b["init_args"] for b in seen] == [{"address": "10.0.0.7:6379"}, {}]
    assert seen[0]["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0}


def test_run_on_the_inprocess_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["run", *LEAST_SQUARES, f"results-dir={tmp_path}", "--engine", "inprocess"])
    assert "local-sgd: round 2: train-loss" in capsys.readouterr().out
    assert [p.name for p in tmp_path.glob("*/metrics.jsonl")] == ["metrics.jsonl"]


@pytest.mark.slow
def test_run_config_on_the_simulation_engine_matches_inprocess() -> None:
    config = least_squares_config(num_clients=2, num_rounds=1)
    simulated = run_config(config, engine="simulation", quiet=True)
    inprocess = run_config(config, engine="inprocess", quiet=True)
    assert simulated.rounds[-1]["test-loss"] == pytest.approx(inprocess.rounds[-1]["test-loss"])


def test_histogram_prints_the_split_and_refuses_regression_data(capsys, tmp_path) -> None:
    cli.main(
        ["histogram", "num-clients=4", "partition=dirichlet", "--plot", str(tmp_path / "h.png")]
    )
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["partition", "0", "1"]
    assert (tmp_path / "h.png").stat().st_size > 0
    with pytest.raises(SystemExit) as exit_:
        cli.main(["histogram", "dataset=least-squares", "model=linear"])
    assert exit_.value.code == 2
    assert "has no classes" in capsys.readouterr().err


def test_a_run_that_loses_its_quorum_exits_1_with_every_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The strategy's RunFailed (here: a norm bound so tight that a round keeps too few
    workers) ends the command with its message, not a traceback."""
    argv = [*LEAST_SQUARES, "num-clients=4", "update-norm-bound=0.01", "quorum=1"]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", *argv, "results-dir=''", "--engine", "inprocess", "--quiet"])
    assert exit_.value.code == 1
    assert "error: round 1: " in capsys.readouterr().err


def test_compare_refuses_seeds_with_a_swept_seed_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    refused = {
        ("--seeds", "2", "--grid", "seed=0,1"): "seeds=2 is invalid: conflicts with the swept "
        "key seed=[0, 1]",
        ("--seeds", "0"): "seeds=0 is invalid: a whole number of seeds",
    }
    for argv, message in refused.items():
        with pytest.raises(SystemExit) as exit_:
            cli.main(["compare", *LEAST_SQUARES, *argv, "--out", str(out), "--engine", "inprocess"])
        assert exit_.value.code == 2
        assert f"error: {message}" in capsys.readouterr().err
    assert not out.exists()  # refused before anything ran


def test_compare_reads_seeds_from_its_toml_table(tmp_path: Path) -> None:
    """[compare] seeds = 2 over the file's seed 3: runs with seeds 3 and 4, one grid point."""
    out = tmp_path / "cmp"
    config = tmp_path / "compare.toml"
    config.write_text(
        f"""
        dataset = "least-squares"
        model = "linear"
        num-clients = 2
        num-rounds = 2
        seed = 3
        [compare]
        out = "{out}"
        seeds = 2
        engine = "inprocess"
        quiet = true
        """
    )
    cli.main(["compare", "--config", str(config)])
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(r["seed"] for r in summary["runs"]) == [3, 4]
    (point,) = summary["grid-points"]
    assert point["n"] == 2 and sorted(point["seeds"]) == [3, 4]
    assert point["final-test-loss-std"] is not None


@pytest.mark.parametrize(
    ("model", "cuda", "engine"),
    [
        ("linear", False, "vectorized"),
        ("logreg", False, "vectorized"),
        ("cnn", False, "inprocess"),
        ("mlp", False, "inprocess"),
        ("cnn", True, "vectorized"),
    ],
)
def test_auto_takes_the_faster_in_process_engine_for_the_model_and_device(
    model: str, cuda: bool, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedcoop.config import RunConfig
    from simulations import runner

    device = torch.device("cuda" if cuda else "cpu")
    monkeypatch.setattr(runner, "default_device", lambda: device)
    assert runner.fastest_engine(RunConfig.from_mapping({"model": model})) == engine


def test_compare_runs_on_auto_and_auto_runs_the_chosen_grid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`auto` is compare's default, and run_config builds the grid fastest_engine names."""
    from simulations import runner

    assert cli.COMPARE_OPTIONS["engine"] == "auto"
    built: list[str] = []
    for name, grid in runner.GRIDS.items():
        monkeypatch.setitem(
            runner.GRIDS,
            name,
            lambda *a, _name=name, _grid=grid, **k: built.append(_name) or _grid(*a, **k),
        )
    config = least_squares_config(num_clients=2, num_rounds=1)
    monkeypatch.setattr(runner, "fastest_engine", lambda _: "inprocess")
    auto = run_config(config, engine="auto", quiet=True)
    assert built == ["inprocess"]
    vectorized = run_config(config, engine="vectorized", quiet=True)
    assert auto.rounds[-1]["test-loss"] == pytest.approx(vectorized.rounds[-1]["test-loss"])
