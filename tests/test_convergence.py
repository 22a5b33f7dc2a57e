"""Training on the real embedded MNIST data converges, through the Flower path (in-process)."""

from __future__ import annotations

from clients.client_app import app as client_app
from fedcoop.config import RunConfig
from simulations.inprocess import InProcessGrid
from strategies.server_app import run


def _run(**changes: object) -> list[dict[str, float]]:
    config = RunConfig.from_mapping({"results-dir": "", "num-rounds": 20, **changes})
    return run(InProcessGrid(client_app, config.num_clients), config).rounds


def test_local_sgd_learns_mnist_iid() -> None:
    rounds = _run(algorithm="local-sgd")
    assert rounds[0]["test-loss"] > 2.0  # starts near chance (ln 10 = 2.30)
    assert rounds[-1]["test-accuracy"] > 0.85
    assert rounds[-1]["train-loss"] < 0.6 * rounds[0]["train-loss"]


def test_overlap_learns_mnist_on_the_skewed_split() -> None:
    """The overlap paper's non-IID split (64% of each worker's samples from one class)."""
    rounds = _run(algorithm="overlap", partition="skewed")
    assert rounds[-1]["test-accuracy"] > 0.6
    assert rounds[-1]["consensus-distance"] > 0  # the workers really differ
