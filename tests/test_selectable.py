"""Every data set, model and partition is selectable from the run config and trains.

One short run each through the real strategy and ClientApp (in-process), on small files the
tests write in each data set's real on-disk format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clients.client_app import app as client_app
from fedcoop.config import RunConfig
from simulations.inprocess import InProcessGrid
from strategies.server_app import run
from tests.conftest import write_cifar10, write_cifar100, write_mnist

CASES = {
    "mnist-mlp-dirichlet": dict(dataset="mnist", model="mlp", partition="dirichlet"),
    "fashion-cnn-pathological": dict(
        dataset="fashion-mnist", model="cnn", partition="pathological"
    ),
    "fashion-logreg-shards": dict(dataset="fashion-mnist", model="logreg", partition="shards"),
    "cifar10-resnet18-iid": dict(dataset="cifar10", model="resnet18"),
    "cifar100-vgg16-iid": dict(dataset="cifar100", model="vgg16"),
    "synthetic-logreg-natural": dict(dataset="synthetic", model="logreg", partition="natural"),
    "embedded-cnn-skewed": dict(model="cnn", partition="skewed", major_fraction=0.25),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_mnist(root / "MNIST" / "raw", seed=1, compress=True, sizes=(60, 12))
    write_mnist(root / "FashionMNIST" / "raw", seed=2, compress=False, sizes=(60, 12))
    write_cifar10(root / "cifar-10-batches-py", seed=3)
    write_cifar100(root / "cifar-100-python", seed=4)
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_selectable_from_the_run_config(case: str, data_root: Path) -> None:
    config = RunConfig.from_mapping(
        {
            "num-clients": 3,
            "num-rounds": 2,
            "tau": 1,
            "batch-size": 4,
            "lr": 0.01,
            "results-dir": "",
            "data-root": str(data_root),
            **CASES[case],
        }
    )
    result = run(InProcessGrid(client_app, 3), config)
    assert [row["round"] for row in result.rounds] == [1, 2]
    assert np.isfinite([row["train-loss"] for row in result.rounds]).all()
    assert 0.0 <= result.rounds[-1]["test-accuracy"] <= 1.0
    assert result.workers is not None and np.isfinite(result.workers).all()
