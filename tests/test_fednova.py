"""Devices that differ and FedNova (Wang, Liu, Liang, Joshi, Poor, NeurIPS 2020): round-time
budgets give each worker its own tau_i; FedAvg then averages unequal progress and FedNova
normalises it, both held to references written from the paper's equations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcoop import devices, participation, workload
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError
from tests.conftest import (
    assert_paths_agree,
    gradient_oracle,
    least_squares_config,
    run_in_process,
    x0_of,
)

#: 5 workers of speeds drawn in [0.1, 1], 0.5 s rounds of 0.05 s steps: tau_i = (6, 1, 6, 7, 1)
BUDGET = {"round_time": 0.5, "step_time": 0.05, "device_speeds": "uniform:0.1:1.0"}


def _weights(config: RunConfig) -> np.ndarray:
    m = config.num_clients
    counts = np.array([len(workload.shard(config, i, m)) for i in range(m)], dtype=np.float64)
    return counts / counts.sum()


def _norm(steps: int, rho: float) -> float:
    """||a_i||_1 of the paper (Appendix: heavy-ball momentum, buffer zero at the start)."""
    return steps if rho == 0 else (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


def reference(config: RunConfig, taus: tuple[int, ...], normalized: bool) -> np.ndarray:
    """FedAvg (normalized=False) or FedNova (eq. 7): the sampled workers run their own tau_i
    steps of heavy-ball SGD from x (FedNova's buffer zero each round); FedAvg takes the
    p-weighted mean of their models, FedNova x - tau_eff sum p_i (x - y_i) / a_i with
    tau_eff = sum_j p_j a_j over every worker (fedcoop's choice: any tau_eff keeps the
    objective consistent, Theorem 1)."""
    grad = gradient_oracle(config)
    m, lr, rho = config.num_clients, config.lr, config.momentum
    p = _weights(config)
    norms = np.array([_norm(t, rho) for t in taus])
    tau_eff = float(p @ norms)
    x = x0_of(config)
    buffers = [np.zeros_like(x) for _ in range(m)]
    for r in range(1, config.num_rounds + 1):
        cohort = sorted(participation.sample(config.seed, r, m, config.participation))
        share = p[cohort] / p[cohort].sum()
        step = np.zeros_like(x)
        for weight, i in zip(share, cohort, strict=True):
            y, buf = x.copy(), (np.zeros_like(x) if normalized else buffers[i])
            for _ in range(taus[i]):
                buf = rho * buf + grad(i, y, 0)
                y = y - lr * buf
            buffers[i] = buf
            step += weight * ((x - y) * tau_eff / norms[i] if normalized else (x - y))
        x = x - step
    return x


@pytest.mark.cross_path
@pytest.mark.parametrize("engine", ["inprocess", "vectorized"])
@pytest.mark.parametrize("algorithm", ["fedavg", "fednova"])
@pytest.mark.parametrize(
    "changes",
    [{}, {"momentum": 0.5}, {"participation": 0.6}],
    ids=["sgd", "momentum", "partial"],
)
def test_round_time_budgets_follow_the_papers_rules(
    engine: str, algorithm: str, changes: dict[str, float]
) -> None:
    config = least_squares_config(algorithm=algorithm, num_rounds=5, **BUDGET, **changes)
    result, _ = run_in_process(config, engine=engine)
    assert result.spec.worker_taus == (6, 1, 6, 7, 1)
    expected = reference(config, result.spec.worker_taus, algorithm == "fednova")
    assert result.workers is not None
    for worker in result.workers:
        assert_paths_agree(worker, expected)
    if config.participation == 1:  # a row's tau is the mean tau_i of the round's workers
        assert all(row["tau"] == pytest.approx(4.2) for row in result.rounds)


def test_a_stock_strategy_runs_each_workers_own_steps_too() -> None:
    """Flower's FedAvg on fedcoop's clients under the same budget: each worker computes its
    tau_i from the config, and the global model is the FedAvg reference's."""
    config = least_squares_config(algorithm="flower:FedAvg", num_rounds=5, **BUDGET)
    result, _ = run_in_process(config)
    assert result.server_model is not None and result.spec.worker_taus == (6, 1, 6, 7, 1)
    assert_paths_agree(result.server_model, reference(config, result.spec.worker_taus, False))
    assert all(row["tau"] == pytest.approx(4.2) for row in result.rounds)


def test_fednova_with_equal_steps_is_fedavg() -> None:
    """tau_eff / a_i = 1 when every worker runs tau: FedNova with SGD is FedAvg (the
    paper's remark; with momentum FedNova also restarts each worker's buffer every
    round, which fedcoop's FedAvg carries over)."""
    config = least_squares_config(algorithm="fednova")
    nova, _ = run_in_process(config)
    avg, _ = run_in_process(config.replace(algorithm="fedavg"))
    assert nova.workers is not None and avg.workers is not None
    assert_paths_agree(nova.workers, avg.workers)


def test_fedavg_settles_away_from_the_optimum_and_fednova_near_it() -> None:
    """The paper's headline (Section 3, Fig. 1) on least squares with known optimum x*:
    under unequal tau_i FedAvg minimises sum_i p_i tau_i F_i instead of sum_i p_i F_i and
    settles far from x*; FedNova settles near it, off only by the O(lr) drift of local
    steps that FedAvg with equal steps has too (docs/reproductions-follow-ups.md)."""
    config = least_squares_config(algorithm="fedavg", num_rounds=150, **BUDGET)
    m = config.num_clients
    shards = [workload.shard(config, i, m) for i in range(m)]
    a = np.concatenate([s.x.double().numpy().reshape(len(s), -1) for s in shards])
    b = np.concatenate([s.y.double().numpy() for s in shards])
    optimum = np.linalg.lstsq(a, b, rcond=None)[0]

    def distance(changes: dict[str, object]) -> float:
        result, _ = run_in_process(config.replace(**changes), engine="vectorized")
        assert result.workers is not None
        return float(np.linalg.norm(result.workers[0] - optimum))

    fedavg, fednova = distance({}), distance({"algorithm": "fednova"})
    equal = distance({"round_time": 0.0})
    assert fedavg > 5 * fednova
    assert fednova < 5 * equal


def test_device_speeds_come_from_a_distribution_or_a_csv(tmp_path: Path) -> None:
    speeds = devices.speeds("lognormal:0.5", 2000, seed=1)
    assert speeds.mean() == pytest.approx(1.0, rel=0.05)
    np.testing.assert_array_equal(speeds, devices.speeds("lognormal:0.5", 2000, seed=1))
    assert devices.local_steps(np.array([0.1, 1.0, 2.0]), 0.5, 0.05) == (1, 10, 20)
    table = tmp_path / "devices.csv"
    table.write_text("worker,speed\n1,0.5\n0,2\n")
    np.testing.assert_array_equal(devices.speeds(str(table), 2, seed=0), [2.0, 0.5])


@pytest.mark.parametrize(
    ("text", "where", "value"),
    [
        ("worker,speed\n0,1\n1,-2\n", "row 3, column speed", "-2"),
        ("worker,speed\n0,1\n0,1\n", "row 3, column worker", 0),
        ("worker,speed\n0,1\n5,1\n", "row 3, column worker", "5"),
        ("worker,speed\n0,fast\n1,1\n", "row 2, column speed", "fast"),
        ("id,speed\n0,1\n1,1\n", "row 1", ["id", "speed"]),
        ("worker,speed\n0,1\n", "", "no row for worker 1"),
    ],
)
def test_a_bad_device_csv_is_refused_naming_its_file_row_and_column(
    tmp_path: Path, text: str, where: str, value: object
) -> None:
    table = tmp_path / "devices.csv"
    table.write_text(text)
    with pytest.raises(ConfigError) as caught:
        devices.speeds(str(table), 2, seed=0)
    assert str(table) in caught.value.parameter and where in caught.value.parameter
    assert caught.value.value == value


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"algorithm": "overlap", **BUDGET}, "round-time"),
        ({"algorithm": "fedavg", "tau_schedule": "2,1", **BUDGET}, "tau-schedule"),
        ({"algorithm": "fednova", "momentum": 0.5, "nesterov": True}, "nesterov"),
        ({"algorithm": "fednova", "update_rule": "mix-before-step"}, "update-rule"),
        ({"algorithm": "fedavg", "device_speeds": "gamma:2"}, "device-speeds"),
        ({"algorithm": "fedavg", "round_time": 0.5, "step_time": 0.0}, "round-time"),
    ],
)
def test_keys_that_cannot_take_per_worker_steps_are_refused(
    changes: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        run_in_process(least_squares_config(**changes))
    assert caught.value.parameter == key


def test_slow_devices_take_longer_on_the_virtual_clock() -> None:
    """At fixed tau, a worker of speed 0.1 computes 10x as long, and the round waits for it."""
    config = least_squares_config(algorithm="fedavg", step_time=0.05)
    fast, _ = run_in_process(config)
    slow, _ = run_in_process(config.replace(device_speeds="uniform:0.1:0.1"))
    ratio = slow.rounds[-1]["virtual-time"] / fast.rounds[-1]["virtual-time"]
    assert ratio > 5
