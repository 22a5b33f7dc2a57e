"""The `fedcoop` command: `analyze` (the theory on the matrix a config really resolves to)
and `run` (a config through Flower's simulation engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcoop import theory
from fedcoop.analysis import analyze
from fedcoop.config import RunConfig
from simulations.cli import main


def findings(**config: object) -> dict[str, float]:
    return {
        f.name: f.value for f in analyze(RunConfig.from_mapping(config), t_comm=0.3, t_step=0.05)
    }


def test_local_sgd_has_zeta_zero_and_the_closed_form_floor() -> None:
    got = findings(algorithm="local-sgd", tau=4, num_clients=8, lr=0.05)
    assert got["zeta"] == pytest.approx(0.0, abs=1e-12)
    # eq. (18) at zeta = 0, v = 0: eta L s2 / m + eta^2 L^2 s2 (tau - 1)
    assert got["error floor"] == pytest.approx(0.05 / 8 + 0.05**2 * 3)
    assert got["zeta_tau"] == pytest.approx((1 - 2 / 5) ** 0.5)
    assert got["tau to hide comm"] == 6


def test_easgd_default_alpha_reaches_lemma_1() -> None:
    got = findings(algorithm="easgd", num_clients=8, tau=1)
    assert got["best alpha"] == pytest.approx(0.2)
    assert got["zeta"] == pytest.approx(8 / 10)  # Lemma 1: m/(m+2) at alpha = 2/(m+2)
    assert got["error floor"] == pytest.approx(theory.error_floor(0.05, 1.0, 1.0, 8, 1, 0.8, 1))
    assert got["max lr"] == pytest.approx(theory.max_learning_rate(1.0, 8, 1, 0.8, 1))


def test_generalized_elastic_improves_on_the_ring() -> None:
    got = findings(algorithm="generalized-elastic", num_clients=8)
    assert got["best zeta'"] < got["zeta of the graph"]
    assert got["zeta"] == pytest.approx(got["best zeta'"])  # auto alpha is Lemma 2's


def test_overlap_zeta_is_within_one_minus_alpha() -> None:
    got = findings(algorithm="overlap", tau=2)
    assert got["zeta"] <= got["zeta bound"] + 1e-12 and got["zeta bound"] == pytest.approx(0.4)
    assert "error floor" not in got  # Theorem 1 needs a symmetric W


def test_cli_prints_a_table_and_refuses_bad_configs(capsys: pytest.CaptureFixture[str]) -> None:
    main(["analyze", "algorithm=dpsgd", "topology=torus", "num-clients=8"])
    assert "zeta_tau" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "algorithm=easgd", "alpha=0.3"])
    assert exit_info.value.code == 2
    assert "alpha=0.3" in capsys.readouterr().err


def test_cli_run_trains_through_the_simulation_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fedcoop run`: a TOML file plus overrides, as many SuperNodes as num-clients."""
    config_file = tmp_path / "run.toml"
    config_file.write_text('dataset = "least-squares"\nmodel = "linear"\nbatch-size = 0\n')
    main(
        [
            "run", "--quiet", "--config", str(config_file), "algorithm=overlap", "tau=1",
            "num-clients=3", "num-rounds=2", f"results-dir={tmp_path / 'runs'}",
        ]
    )  # fmt: skip
    assert "overlap: round 2: train-loss" in capsys.readouterr().out
    (run_dir,) = (tmp_path / "runs").iterdir()
    written = json.loads((run_dir / "config.json").read_text())["config"]
    assert written["dataset"] == "least-squares" and written["num-clients"] == 3
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
