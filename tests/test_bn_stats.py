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
