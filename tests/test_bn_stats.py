"""bn-stats = "local": each worker keeps its own BatchNorm statistics (the overlap paper's
code), the syncs and the server's models replace only the parameters."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from clients import worker_state
from fedcoop import workload
from fedcoop.config import RunConfig
from fedcoop.model_vectors import layout
from fedcoop.spec import ClientRule, UpdateRule
from tests.conftest import assert_paths_agree, image_overlap_config, run_in_process


def _bn_run(algorithm: str, bn_stats: str) -> RunConfig:
    return replace(
        image_overlap_config("bn-mlp"), algorithm=algorithm, batch_size=16, bn_stats=bn_stats
    )


def _buffer_entries(config: RunConfig) -> np.ndarray:
    """Where the model vector holds buffers (BatchNorm's running mean and variance)."""
    model = workload.build_model(config)
    params, start, out = {name for name, _ in model.named_parameters()}, 0, []
    for name, shape in layout(model):
        size = int(np.prod(shape))
        if name not in params:
            out.extend(range(start, start + size))
        start += size
    return np.array(out)


@pytest.mark.cross_path
@pytest.mark.parametrize("algorithm", ["local-sgd", "overlap"])
def test_local_bn_stats_keep_each_workers_buffers_and_mix_the_parameters_alike(
    algorithm: str,
) -> None:
    """In training mode BatchNorm normalises with the batch's statistics, so the running
    ones never reach a gradient: the parameters follow the same rule whether the buffers
    are mixed or kept, and only the buffers differ, each worker's its own."""
    mixed, _ = run_in_process(_bn_run(algorithm, "mixed"))
    local, _ = run_in_process(_bn_run(algorithm, "local"))
    assert mixed.workers is not None and local.workers is not None
    buffers = _buffer_entries(_bn_run(algorithm, "local"))
    params = np.setdiff1d(np.arange(local.workers.shape[1]), buffers)
    assert buffers.size and params.size
    assert_paths_agree(local.workers[:, params], mixed.workers[:, params])
    if algorithm == "local-sgd":  # after the final average every worker holds the same state
        assert np.ptp(mixed.workers[:, buffers], axis=0).max() == 0.0
    assert np.ptp(local.workers[:, buffers], axis=0).max() > 1e-3


@pytest.mark.cross_path
def test_local_bn_stats_give_the_same_models_on_every_in_process_engine() -> None:
    config = _bn_run("overlap", "local")
    one, _ = run_in_process(config)
    batched, _ = run_in_process(config, engine="vectorized")
    assert one.workers is not None and batched.workers is not None
    assert_paths_agree(batched.workers, one.workers)


def test_a_sync_and_a_received_model_replace_only_the_parameters() -> None:
    """LocalRule.apply_sync, adopt and receive under local buffers: x_i <- w_ii x_i + mix
    on the parameter entries, the worker's own values on the buffer entries."""
    config = _bn_run("local-sgd", "local")
    rule = worker_state.rule_for(config)
    buffers = torch.from_numpy(_buffer_entries(config))
    generator = torch.Generator().manual_seed(0)
    shard = workload.shard(config, 0, config.num_clients)
    workers = [rule.worker(shard) for _ in range(2)]
    for w in workers:
        w.x = torch.randn(w.x.shape, generator=generator, dtype=w.x.dtype)
    own = [w.x.clone() for w in workers]
    mixes = [torch.randn(own[0].shape, generator=generator, dtype=own[0].dtype) for _ in workers]
    rule.apply_sync(workers, [0.25, 0.5], mixes, ClientRule.MIX, UpdateRule.MIX_AFTER_STEP)
    for w, x, mix, weight in zip(workers, own, mixes, [0.25, 0.5], strict=True):
        expected = weight * x + mix
        expected[buffers] = x[buffers]
        torch.testing.assert_close(w.x, expected)
    sent = torch.randn(own[0].shape, generator=generator, dtype=own[0].dtype)
    before = workers[0].x.clone()
    rule.adopt(workers[0], sent, reset=False)
    expected = sent.clone()
    expected[buffers] = before[buffers]
    torch.testing.assert_close(workers[0].x, expected)


# -- the workers' own models, evaluated every round ------------------------------------------
LOCAL_KEYS = ["local-test-loss", "local-test-accuracy"]


def _evaluated_run(algorithm: str, **changes: object) -> RunConfig:
    return replace(_bn_run(algorithm, "local"), eval_local_workers=3, eval_samples=200, **changes)


def test_the_workers_own_models_are_evaluated_after_each_round_they_train() -> None:
    """A stock FedAvg never sends its workers the final model, so each worker's state after
    the run is the model it reported in the last round: the last row's local-test-* is
    the mean, over the drawn workers, of those models on the evaluation sample, each with
    its own BatchNorm statistics."""
    config = _evaluated_run("flower:FedAvg")
    result, grid = run_in_process(config)
    chosen = [i for i in range(config.num_clients) if workload.evaluated_locally(config, i)]
    assert len(chosen) == 3
    rule = worker_state.rule_for(config)
    test = workload.eval_sample(config)
    by_partition = {
        int(grid.contexts[n].node_config["partition-id"]): grid.contexts[n]
        for n in grid.get_node_ids()
    }
    own = [
        rule.evaluate(worker_state.current_worker(config, by_partition[i]).x, test) for i in chosen
    ]
    last = result.rounds[-1]
    assert_paths_agree(np.float64(last["local-test-loss"]), np.mean([o[0] for o in own]))
    assert last["local-test-accuracy"] == pytest.approx(np.mean([o[1] for o in own]))
    assert all(set(LOCAL_KEYS) <= set(row) for row in result.rounds)


@pytest.mark.cross_path
def test_fedcoops_rounds_report_the_same_local_evaluation_as_the_stock_path() -> None:
    """fedavg reaches the same worker models each round as Flower's FedAvg on these
    clients, so its local-test-* columns are the stock path's (checked above against the
    workers' states), on both in-process engines."""
    stock, _ = run_in_process(_evaluated_run("flower:FedAvg"))
    for engine in ("inprocess", "vectorized"):
        ours, _ = run_in_process(_evaluated_run("fedavg"), engine=engine)
        for a, b in zip(ours.rounds, stock.rounds, strict=True):
            for key in LOCAL_KEYS:
                assert_paths_agree(np.float64(a[key]), np.float64(b[key]), rtol=1e-4)


def test_local_evaluation_is_off_by_default_and_then_absent_from_the_rows() -> None:
    result, _ = run_in_process(_bn_run("overlap", "local"))
    assert not any(key in row for row in result.rounds for key in LOCAL_KEYS)
