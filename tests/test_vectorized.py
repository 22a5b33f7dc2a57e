"""The vectorized engine: the Flower path's models, the cohort's local steps as one batch.

tests/test_equivalence.py runs every algorithm on it against the matrix rule (least squares,
float64). Here: the train messages of a round really arrive as one batch; the image models
give the in-process Flower path's per-round losses and models in float32, and a batch of
workers ends where each worker alone ends, to the float rule of two code paths
(docs/testing.md#comparing-floats: the batched kernels may sum in another order, nothing
else differs); and a NaN worker is rejected as on the Flower path (tests/test_checkpoint.py
crashes and resumes a run on it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from flwr.app import Context, Message

from clients import client_app as client_module
from clients.client_app import app as client_app
from fedcoop.data import ArrayDataset
from fedcoop.local_rule import LocalRule
from fedcoop.model_vectors import loss_function, model_vector
from fedcoop.optimizers import LocalSGD, sgd
from fedcoop.spec import UpdateRule
from simulations.inprocess import InProcessGrid
from simulations.vectorized import VectorizedGrid
from strategies.server_app import run
from tests.conftest import (
    PATH_RTOL,
    TIMINGS,
    assert_matches_reference,
    assert_paths_agree,
    image_overlap_config,
    least_squares_config,
    misbehaving,
    round_of,
    set_model,
    tamper,
)

pytestmark = pytest.mark.cross_path
FLOAT32_RTOL = PATH_RTOL[np.dtype(np.float32)]


def recording(sizes: list[int]) -> client_module.TrainMany:
    def train(batch: Sequence[tuple[Message, Context]]) -> list[Message | Exception]:
        sizes.append(len(batch))
        return client_module.train_many(batch)

    return train


@pytest.mark.parametrize(
    ("algorithm", "participation", "batch"),
    [("local-sgd", 1.0, 6), ("fedavg", 0.5, 3), ("dpsgd", 1.0, 6)],
)
def test_a_rounds_train_messages_run_as_one_batch(
    algorithm: str, participation: float, batch: int
) -> None:
    sizes: list[int] = []
    config = least_squares_config(
        algorithm=algorithm, num_clients=6, participation=participation, tau=2
    )
    run(VectorizedGrid(client_app, 6, train=recording(sizes)), config)
    # every round's cohort at once, and the final sync to all six, a cohort at a time
    assert sizes == [batch] * config.num_rounds + [batch] * (6 // batch)


@pytest.mark.parametrize("model", ["cnn", "mlp", "bn-mlp", "resnet8"])
def test_image_models_give_the_flower_paths_losses(model: str) -> None:
    config = image_overlap_config(model)
    flower = run(InProcessGrid(client_app, 4), config)
    vectorized = run(VectorizedGrid(client_app, 4), config)
    assert len(flower.rounds) == len(vectorized.rounds) == 2
    for a, b in zip(flower.rounds, vectorized.rounds, strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - TIMINGS:
            assert b[key] == pytest.approx(a[key], rel=FLOAT32_RTOL, abs=1e-7), key
    assert_paths_agree(vectorized.workers, flower.workers)
    assert flower.rounds[-1]["train-loss"] < flower.rounds[0]["train-loss"]


NAN = set_model(lambda x: np.where(np.arange(x.size) == 0, np.nan, x))


def tampered(partition: int, round_: int) -> client_module.TrainMany:
    """train_many, except that `partition`'s reply to `round_` carries a NaN."""

    def train(batch: Sequence[tuple[Message, Context]]) -> list[Message | Exception]:
        replies = client_module.train_many(batch)
        for (msg, context), reply in zip(batch, replies, strict=True):
            mine = context.node_config["partition-id"] == partition
            if mine and round_of(msg) == round_ and isinstance(reply, Message):
                NAN(reply)
        return replies

    return train


@pytest.mark.parametrize("algorithm", ["local-sgd", "overlap"])
def test_a_nan_worker_is_rejected_and_the_rest_follow_the_matrix_rule(algorithm: str) -> None:
    config = least_squares_config(algorithm=algorithm)
    grid = VectorizedGrid(client_app, config.num_clients, train=tampered(1, 2))
    result = run(grid, config)
    (rejected,) = result.events
    assert (rejected["round"], rejected["worker"], rejected["kind"]) == (2, 1, "rejected")
    assert "NaN or Inf" in rejected["reason"]
    assert [row["rejected"] for row in result.rounds] == [0, 1, 0, 0]
    assert_matches_reference(config, result)
    flower = InProcessGrid(misbehaving(1, [2], tamper(NAN)), config.num_clients)
    assert_paths_agree(result.workers, run(flower, config).workers)


def test_a_model_with_batchnorm_trains_each_worker_on_its_own_statistics() -> None:
    """BatchNorm's running statistics are part of x; in a batch each worker updates its own,
    exactly as it would alone (the per-worker path that vmap cannot take)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.ReLU(), torch.nn.Linear(3, 2)
    ).double()
    shards = [
        ArrayDataset(x=torch.randn(16, 4, dtype=torch.float64) + i, y=torch.randint(0, 2, (16,)))
        for i in range(3)
    ]
    rule = LocalRule(
        model,
        LocalSGD(lr=0.1, batch_size=4, optimizer=sgd(0.9)),
        torch.device("cpu"),
        torch.float64,
        loss_fn=loss_function(shards[0]),
    )
    assert not rule.batched
    x0 = model_vector(model)

    def generators() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(i) for i in range(3)]

    together = [rule.worker(s, x0) for s in shards]
    rule.run(together, 3, UpdateRule.MIX_AFTER_STEP, generators())
    for i, shard in enumerate(shards):
        alone = rule.worker(shard, x0)
        rule.run([alone], 3, UpdateRule.MIX_AFTER_STEP, [generators()[i]])
        assert_paths_agree(together[i].x, alone.x)
    # the running means (after the first layer's 15 entries and BatchNorm's weight and
    # bias) moved from their initial zeros, differently per worker
    names = [k for k, t in model.state_dict().items() if t.is_floating_point()]
    assert names[4] == "1.running_mean"
    means = torch.stack([w.x[21:24] for w in together])
    assert (means != 0).all() and not torch.allclose(means[0], means[1])


def test_workers_whose_shards_differ_in_size_train_in_one_batch_as_alone() -> None:
    """batch-size 4 on shards of 4, 8 and 6 rows: the first takes full batches of 4, the
    others mini-batches of 4; a batch of all three ends where each ends alone."""
    torch.manual_seed(1)
    shards = [
        ArrayDataset(
            x=torch.randn(n, 3, dtype=torch.float64), y=torch.randn(n, dtype=torch.float64)
        )
        for n in (4, 8, 6)
    ]
    model = torch.nn.Linear(3, 1).double()
    rule = LocalRule(
        model,
        LocalSGD(lr=0.1, batch_size=4),
        torch.device("cpu"),
        torch.float64,
        loss_fn=loss_function(shards[0]),
    )
    x0 = model_vector(model)
    together = [rule.worker(s, x0) for s in shards]
    seeds = [torch.Generator().manual_seed(i) for i in range(3)]
    rule.run(together, 5, UpdateRule.MIX_AFTER_STEP, seeds)
    for i, shard in enumerate(shards):
        alone = rule.worker(shard, x0)
        rule.run([alone], 5, UpdateRule.MIX_AFTER_STEP, [torch.Generator().manual_seed(i)])
        assert_paths_agree(together[i].x, alone.x)
