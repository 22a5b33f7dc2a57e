"""What each worker trains on, its schedule, the experiment files, and run determinism."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from clients.client_app import app as client_app
from fedcoop import algorithms, workload
from fedcoop.config import RunConfig
from fedcoop.data import ArrayDataset
from fedcoop.local_rule import LocalRule
from fedcoop.model_vectors import evaluate, load_model_vector, loss_function, model_vector
from fedcoop.models import LinearRegression
from fedcoop.optimizers import LocalSGD
from fedcoop.spec import UpdateRule
from simulations.inprocess import InProcessGrid
from strategies.server_app import initial_model, run
from tests.conftest import TIMINGS, assert_replayed, least_squares_config, run_in_process

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "simulations" / "experiments").glob("*.toml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_files_are_valid_configs(path: Path) -> None:
    """Each experiment file, and each point of a comparison file's [grid], resolves."""
    values = tomllib.loads(path.read_text())
    grid, _ = values.pop("grid", {}), values.pop("compare", {})
    for point in itertools.product(*grid.values()):
        config = RunConfig.from_mapping({**values, **dict(zip(grid, point, strict=True))})
        spec = algorithms.resolve(config)
        assert spec.num_workers == config.num_clients


def test_paper_schedule_from_the_config() -> None:
    """Warm-up from lr to m * lr over the warm-up epochs, then x decay-factor per boundary."""
    config = RunConfig.from_mapping(
        {
            "lr-schedule": "paper",
            "lr": 0.1,
            "num-clients": 4,
            "batch-size": 100,  # 8000 train images / 4 workers / 100 = 20 steps per epoch
            "scale-lr-by-workers": True,
            "warmup-epochs": 1.0,
            "decay-epochs": "2,3",
            "decay-factor": 0.5,
        }
    )
    lr = workload.schedule(config).lr
    assert lr(1) == pytest.approx(0.1)
    assert lr(11) == pytest.approx(0.25)  # halfway through the 20 warm-up steps
    assert lr(21) == pytest.approx(0.4)
    assert lr(40) == pytest.approx(0.4)
    assert lr(41) == pytest.approx(0.2)
    assert lr(61) == pytest.approx(0.1)


def test_constant_schedule_scales_by_workers_when_asked() -> None:
    config = RunConfig.from_mapping({"lr": 0.05, "num-clients": 4, "scale-lr-by-workers": True})
    assert workload.schedule(config).lr(1000) == pytest.approx(0.2)


def test_worker_steps_at_the_scheduled_learning_rates() -> None:
    """f(w) = 0.5 w^2 on one sample x = 1, y = 0: each step multiplies w by (1 - lr_k)."""
    data = ArrayDataset(
        x=torch.ones(1, 1, dtype=torch.float64), y=torch.zeros(1, dtype=torch.float64)
    )
    rule = LocalRule(
        LinearRegression(1),
        LocalSGD(lr=1.0, batch_size=0),
        torch.device("cpu"),
        torch.float64,
        loss_fn=loss_function(data),
        lr_at=lambda k: 0.1 * k,
    )
    worker = rule.worker(data, torch.tensor([1.0], dtype=torch.float64))
    rule.run([worker], 3, UpdateRule.MIX_AFTER_STEP, [torch.Generator()])
    assert worker.x.item() == pytest.approx(0.9 * 0.8 * 0.7)
    assert worker.steps_done == 3


def _metrics(rounds: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rounds]


DETERMINISM = {"num-rounds": 3, "num-clients": 4, "results-dir": "", "partition": "dirichlet"}


def test_same_seed_same_partitions_and_metrics_across_runs() -> None:
    config = RunConfig.from_mapping({**DETERMINISM, "algorithm": "overlap"})
    first = run(InProcessGrid(client_app, 4, seed=1), config)
    workload.clear_caches()
    second = run(InProcessGrid(client_app, 4, seed=2), config)
    assert _metrics(first.rounds) == _metrics(second.rounds)
    assert_replayed(first.workers, second.workers)
    other = run(InProcessGrid(client_app, 4), config.replace(seed=1))
    assert _metrics(other.rounds) != _metrics(first.rounds)


def test_same_seed_same_metrics_in_another_process() -> None:
    """Another interpreter (fresh caches, fresh torch state) reproduces the metrics exactly."""
    config = RunConfig.from_mapping({**DETERMINISM, "algorithm": "dpsgd"})
    here = _metrics(run(InProcessGrid(client_app, 4), config).rounds)
    script = (
        "import json, logging; logging.getLogger('flwr').setLevel(logging.ERROR)\n"
        "from clients.client_app import app\n"
        "from fedcoop.config import RunConfig\n"
        "from simulations.inprocess import InProcessGrid\n"
        "from strategies.server_app import run\n"
        f"config = RunConfig.from_mapping({json.dumps({**DETERMINISM, 'algorithm': 'dpsgd'})})\n"
        "rounds = run(InProcessGrid(app, 4, seed=7), config).rounds\n"
        "print(json.dumps(rounds))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert _metrics(json.loads(out.stdout.strip().splitlines()[-1])) == here


def test_workers_missing_classes_still_share_the_model_layout() -> None:
    """With 1 class per worker, shards lack the top labels; models are sized by the full set."""
    config = RunConfig.from_mapping(
        {
            "partition": "pathological",
            "classes-per-partition": 1,
            "num-clients": 4,
            "num-rounds": 1,
            "tau": 1,
            "results-dir": "",
        }
    )
    assert {int(workload.shard(config, i, 4).y.max()) for i in range(4)} != {9}
    result = run(InProcessGrid(client_app, 4), config)
    x0 = model_vector(initial_model(config))
    assert result.workers is not None and result.workers.shape == (4, x0.numel())


def test_histogram_command_prints_the_configs_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulations.cli import main

    main(
        [
            "histogram",
            "partition=skewed",
            "num-clients=4",
            "major-fraction=0.3",
            "--plot",
            str(tmp_path / "h.png"),
        ]
    )
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[1:5]]
    # 8000 images / 4 = 2000 per client, 600 of its major class (client i -> class i)
    assert [int(row[1 + i]) for i, row in enumerate(rows)] == [600] * 4
    assert (tmp_path / "h.png").stat().st_size > 0


def test_a_sweep_over_algorithms_shares_one_copy_of_each_shard() -> None:
    """The shard cache is keyed on the data keys only: a compare over algorithm, tau and lr
    keeps one copy of the data, not one per run."""
    base = RunConfig.from_mapping({**DETERMINISM, "algorithm": "overlap"})
    first = workload.shard(base, 1, 4)
    for changes in ({"algorithm": "local-sgd"}, {"tau": 7}, {"lr": 0.3}):
        assert workload.shard(base.replace(**changes), 1, 4) is first
    assert workload.shard(base.replace(seed=3), 1, 4) is not first


# --- the workers' final evaluation -----------------------------------------------------


def test_the_evaluation_sample_is_seeded_and_shared_by_every_worker() -> None:
    config = least_squares_config(eval_samples=7)
    _, test = workload.load_split(config)
    sample = workload.eval_sample(config)
    assert len(sample) == 7 < len(test)
    rows = {tuple(row.tolist()) for row in test.x}
    assert all(tuple(row.tolist()) in rows for row in sample.x)
    workload.clear_caches()
    assert torch.equal(workload.eval_sample(config).x, sample.x)  # a fresh process's view
    other = workload.eval_sample(least_squares_config(eval_samples=7, seed=1))
    assert not torch.equal(other.x, sample.x)
    for whole in (0, len(test), len(test) + 1):
        assert len(workload.eval_sample(least_squares_config(eval_samples=whole))) == len(test)


def test_workers_evaluate_their_final_models_on_the_sample() -> None:
    """The reported mean loss is that of each worker's own final model on the sample, and
    not the one on the whole test set; the evaluation's time is reported beside it."""
    config = least_squares_config(eval_samples=7, eval_workers=0)
    result, _ = run_in_process(config)
    assert result.workers is not None

    def mean_loss(data: ArrayDataset) -> float:
        model = workload.build_model(config).to(data.x.dtype)  # float64, as the rule runs it
        losses = []
        for x in result.workers:
            load_model_vector(model, torch.from_numpy(x))
            losses.append(evaluate(model, data)[0])
        return float(np.mean(losses))

    on_sample = mean_loss(workload.eval_sample(config))
    assert result.client_evaluation["worker-loss"] == pytest.approx(on_sample, rel=1e-9)
    on_test = mean_loss(workload.load_split(config)[1])
    assert abs(on_test - on_sample) > 1e-6 * abs(on_test)
    assert result.client_evaluation["worker-eval-seconds"] > 0
