"""The accelerator path: which device the workers train on (`FEDCOOP_DEVICE`), and, marked
`gpu`, runs on CUDA held to the matrix rule and to the same runs on the CPU.

The `gpu` tests need a CUDA device and are skipped without one; `benchmarks/gpu_check.sh`
runs them on a lent GPU machine. `FEDCOOP_TEST_ACCELERATOR=cpu` runs them with the CPU
standing in for the accelerator (the comparisons then hold trivially; what it checks is that
the tests and the device switch themselves work, as the script's `--dry-run` does).

Tolerances (docs/testing.md#comparing-floats): float64 on CUDA against the matrix rule, the
rule of two code paths (1e-12 of the magnitude: cuBLAS and MKL both round correctly, in
another order). float32 CUDA against the CPU: 1e-4 of the magnitude for the CNN, ten times
the CPU paths' 1e-5, since cuDNN's convolution algorithms (implicit GEMM, Winograd) sum each
window in their own order; with TF32 off, since TF32 rounds products to 10 mantissa bits,
which is another precision, not another order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from clients import worker_state
from clients.client_app import app as client_app
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError
from fedcoop.model_vectors import DEVICE_VARIABLE, default_device
from simulations.inprocess import InProcessGrid
from simulations.runner import GRIDS
from simulations.vectorized import VectorizedGrid
from strategies.result import RunResult
from strategies.server_app import run
from tests.conftest import (
    PATH_RTOL,
    TIMINGS,
    assert_follows_rule,
    assert_paths_agree,
    image_overlap_config,
    least_squares_config,
    reference_final,
)

#: float32 on the accelerator against the CPU, for models with convolutions (see above)
CONV_FLOAT32_RTOL = 1e-4


# --- the device choice, on any machine ---------------------------------------------------


def test_the_device_variable_picks_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_VARIABLE, raising=False)
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(DEVICE_VARIABLE, " cpu ")
    assert default_device() == torch.device("cpu")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("gpu", "a torch device: cpu, cuda or cuda:<index>"),
        ("meta", "cpu, cuda or cuda:<index>"),
        ("cuda:99", "cuda:0 to cuda:" if torch.cuda.is_available() else "no CUDA device"),
    ],
)
def test_a_device_that_cannot_be_had_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    monkeypatch.setenv(DEVICE_VARIABLE, value)
    with pytest.raises(ConfigError, match=f"{DEVICE_VARIABLE}='{value}' is invalid") as error:
        default_device()
    assert says in str(error.value)


# --- CUDA against the matrix rule and the CPU --------------------------------------------


@pytest.fixture
def accelerator() -> torch.device:
    """The device under test: CUDA, or what FEDCOOP_TEST_ACCELERATOR names."""
    device = torch.device(os.environ.get("FEDCOOP_TEST_ACCELERATOR", "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (benchmarks/gpu_check.sh runs these on a lent one)")
    return device


@pytest.fixture
def on_device(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """`on_device(d)` makes the following runs train and evaluate on d; float32 without
    TF32 while the test runs."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def switch(device: torch.device) -> None:
        monkeypatch.setenv(DEVICE_VARIABLE, str(device))
        worker_state.rule_for.cache_clear()  # the rule holds the model on its device
        worker_state.LIVE.clear()

    yield switch
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    worker_state.rule_for.cache_clear()
    worker_state.LIVE.clear()


def run_on(engine: str, config: RunConfig) -> RunResult:
    return run(GRIDS[engine](client_app, config.num_clients), config)


def assert_same_rounds(got: RunResult, want: RunResult, rtol: float) -> None:
    for a, b in zip(got.rounds, want.rounds, strict=True):
        for key in a.keys() - TIMINGS:
            assert a[key] == pytest.approx(b[key], rel=rtol, abs=rtol), key


FLOAT64_CASES = {
    "sync": dict(algorithm="sync"),
    "local-sgd-momentum-wd": dict(
        algorithm="local-sgd", momentum=0.9, nesterov=True, weight_decay=0.01
    ),
    "easgd": dict(algorithm="easgd", tau=1),
    "dpsgd-ring": dict(algorithm="dpsgd", tau=1, num_clients=6),
    "hierarchical": dict(algorithm="hierarchical", tau=2, num_clients=6, groups=2),
    "overlap": dict(algorithm="overlap", tau=2, participation=0.6),
    "cocod": dict(algorithm="cocod", tau=2),
}


@pytest.mark.gpu
@pytest.mark.parametrize("engine", ["inprocess", "vectorized"])
@pytest.mark.parametrize("case", list(FLOAT64_CASES))
def test_float64_runs_on_the_accelerator_equal_the_matrix_rule(
    accelerator: torch.device, on_device: object, case: str, engine: str
) -> None:
    on_device(accelerator)
    config = least_squares_config(**FLOAT64_CASES[case])
    result = run_on(engine, config)
    assert worker_state.rule_for(config).device.type == accelerator.type
    assert_follows_rule(result, reference_final(config, result))


@pytest.mark.gpu
@pytest.mark.parametrize("engine", ["inprocess", "vectorized"])
@pytest.mark.parametrize("algorithm", ["local-sgd", "overlap", "dpsgd"])
def test_float32_runs_on_the_accelerator_equal_the_cpus(
    accelerator: torch.device, on_device: object, algorithm: str, engine: str
) -> None:
    """Logistic regression on FedProx's Synthetic(1, 1), float32: matrix products only."""
    config = RunConfig.from_mapping(
        {
            "dataset": "synthetic",
            "model": "logreg",
            "algorithm": algorithm,
            "num-clients": 6,
            "num-rounds": 3,
            "tau": 3,
            "momentum": 0.9,
            "results-dir": "",
        }
    )
    on_device(torch.device("cpu"))
    cpu = run_on(engine, config)
    on_device(accelerator)
    there = run_on(engine, config)
    assert there.workers.dtype == np.float32
    assert_paths_agree(there.workers, cpu.workers)
    assert_same_rounds(there, cpu, PATH_RTOL[np.dtype(np.float32)])


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_the_vectorized_engine_on_the_accelerator_gives_the_flower_paths_models(
    accelerator: torch.device, on_device: object, model: str
) -> None:
    config = image_overlap_config(model)
    on_device(accelerator)
    flower = run(InProcessGrid(client_app, 4), config)
    vectorized = run(VectorizedGrid(client_app, 4), config)
    rtol = CONV_FLOAT32_RTOL if model == "cnn" else PATH_RTOL[np.dtype(np.float32)]
    assert_paths_agree(vectorized.workers, flower.workers, rtol)
    assert_same_rounds(vectorized, flower, rtol)


@pytest.mark.gpu
def test_a_cnn_round_on_the_accelerator_equals_the_cpus(
    accelerator: torch.device, on_device: object
) -> None:
    config = RunConfig.from_mapping(
        {
            "model": "cnn",
            "algorithm": "local-sgd",
            "num-clients": 4,
            "num-rounds": 2,
            "tau": 3,
            "momentum": 0.9,
            "nesterov": True,
            "results-dir": "",
        }
    )
    on_device(torch.device("cpu"))
    cpu = run_on("inprocess", config)
    on_device(accelerator)
    there = run_on("inprocess", config)
    assert there.rounds[-1]["train-loss"] < there.rounds[0]["train-loss"]
    assert_paths_agree(there.workers, cpu.workers, CONV_FLOAT32_RTOL)
    assert_same_rounds(there, cpu, CONV_FLOAT32_RTOL)
