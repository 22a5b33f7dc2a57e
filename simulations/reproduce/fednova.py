"""FedNova's headline claim at small scale (Wang et al., NeurIPS 2020, Section 3 and Fig. 1):
with unequal local steps, FedAvg converges to the optimum of the wrong objective and FedNova
to the right one.

Least squares (fedcoop's `least-squares`, 5 workers, full-batch gradients, so that a run is
deterministic), devices of speeds drawn in [0.1, 1] and a round-time budget of 10 step
times: tau_i from 1 to 10 steps per round. Each run's distance to x*, the least-squares
optimum of all the workers' data (the global objective sum_i p_i F_i), after enough rounds
to settle, for FedAvg, FedNova and FedAvg with every worker at the same tau (the drift of
local steps alone), at two learning rates: FedAvg's inconsistency does not shrink with the
learning rate, FedNova's remaining distance does (it is the O(lr) drift equal steps have
too). Seeds 0..2 draw the data and the devices. Verdict by the project's rule
(simulations.stats.differs_paired: a paired difference counts beyond two standard errors).

    python -m simulations.reproduce.fednova
"""

from __future__ import annotations

import time

import numpy as np

from fedcoop import workload
from fedcoop.config import RunConfig
from simulations.runner import run_config
from simulations.stats import DIFFERS, differs_paired

#: the runs: a round-time budget of 10 step times over devices of speed 0.1 .. 1
BASE = {
    "dataset": "least-squares",
    "model": "linear",
    "batch-size": 0,
    "num-clients": 5,
    "partition": "iid",
    "round-time": 0.5,
    "step-time": 0.05,
    "device-speeds": "uniform:0.1:1.0",
    "tau": 4,
    "eval-workers": 1,
    "results-dir": "",
}
#: (lr, rounds): a quarter of the learning rate, four times the rounds
SCHEDULES = ((0.05, 150), (0.0125, 600))
RUNS = {
    "fedavg": {"algorithm": "fedavg"},
    "fednova": {"algorithm": "fednova"},
    "fedavg, equal tau = 4": {"algorithm": "fedavg", "round-time": 0.0},
}


def optimum(config: RunConfig) -> np.ndarray:
    """x*: least squares over every worker's data, the minimiser of sum_i p_i F_i."""
    m = config.num_clients
    shards = [workload.shard(config, i, m) for i in range(m)]
    a = np.concatenate([s.x.double().numpy().reshape(len(s), -1) for s in shards])
    b = np.concatenate([s.y.double().numpy() for s in shards])
    return np.linalg.lstsq(a, b, rcond=None)[0]


def distances(seeds: range) -> dict[tuple[float, str], list[float]]:
    """Each (lr, run)'s distance to x* per seed."""
    out: dict[tuple[float, str], list[float]] = {}
    for lr, rounds in SCHEDULES:
        for name, changes in RUNS.items():
            for seed in seeds:
                values = {**BASE, **changes, "lr": lr, "num-rounds": rounds, "seed": seed}
                config = RunConfig.from_mapping(values)
                result = run_config(config, engine="vectorized", quiet=True, processes=1)
                assert result.workers is not None
                gap = float(np.linalg.norm(result.workers[0] - optimum(config)))
                out.setdefault((lr, name), []).append(gap)
    return out


def main() -> None:
    started = time.monotonic()
    gaps = distances(range(3))
    print("| lr | run | distance to x* (mean ± sd, 3 seeds) |")
    print("|---|---|---|")
    for (lr, name), values in gaps.items():
        print(f"| {lr:g} | {name} | {np.mean(values):.4f} ± {np.std(values, ddof=1):.4f} |")
    for lr, _ in SCHEDULES:
        # paired: the same seed draws the same data and devices for both
        d = differs_paired(gaps[lr, "fedavg"], gaps[lr, "fednova"])
        outcome = "holds" if d.verdict == DIFFERS and d.delta > 0 else d.verdict
        margin = f"{d.delta:.4f} (2 se {2 * d.se:.4f})"
        print(f"lr {lr:g}: FedNova nearer x* than FedAvg by {margin}: {outcome}")
    print(f"wall time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
