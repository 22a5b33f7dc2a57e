"""The Flower ServerApp: read the run config, run the strategy, write the results.

``app`` reads ``context.run_config`` (what ``flwr run`` passes); `make_server_app` binds an
explicit config instead, for ``run_simulation``, which passes an empty run config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcoop import algorithms, checkpoint, data, workload
from fedcoop.config import RunConfig
from fedcoop.training import default_device, evaluate, load_model_vector, model_vector
from simulations.results import run_directory, write_results
from strategies.cooperative import CooperativeStrategy, EvaluateFn, RunResult

LOG = logging.getLogger("flwr.fedcoop")


def initial_model(config: RunConfig) -> torch.nn.Module:
    """x_0, the same for every worker and auxiliary node: the model seeded by config.seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return workload.build_model(config)


def server_evaluator(model: torch.nn.Module, test: data.ArrayDataset) -> EvaluateFn:
    """Test loss and accuracy of a model vector, on the held-out split."""
    device = default_device()
    model = model.to(device=device, dtype=test.x.dtype)

    def evaluate_vector(vector: np.ndarray) -> dict[str, float]:
        load_model_vector(model, torch.from_numpy(vector))
        loss, accuracy = evaluate(model, test)
        return {"loss": loss} if np.isnan(accuracy) else {"loss": loss, "accuracy": accuracy}

    return evaluate_vector


def with_checkpoint(config: RunConfig) -> tuple[RunConfig, dict[str, Any] | None]:
    """(the config to run, the checkpoint): a resumed run runs under the config it was
    started with (the caller needs it too, e.g. for the number of nodes to start)."""
    if not config.resume:
        return config, None
    saved = checkpoint.read(config.resume)
    return RunConfig.from_mapping({**saved["config"], "resume": config.resume}), saved


def run(grid: Grid, config: RunConfig, resumed: dict[str, Any] | None = None) -> RunResult:
    """One run of `config` over `grid`, its results written to config.results_dir.

    With `resume` set to a run directory, the run continues from that directory's
    checkpoint, under the config it was started with, and writes its results there;
    `resumed` is that checkpoint when the caller has already read it (`with_checkpoint`).
    """
    if resumed is None:
        config, resumed = with_checkpoint(config)
    if resumed is not None:
        LOG.info("fedcoop: resuming %s after round %d", config.resume, resumed["round"])
    _, test = workload.load_split(config)
    # The algorithm and the partitions are functions of the config: refuse a bad one here,
    # before any node is waited for, rather than after the handshake or in every client.
    algorithms.resolve(config)
    workload.partition_indices(config, config.num_clients)
    model = initial_model(config)
    x0 = model_vector(model).to(test.x.dtype).numpy()
    directory = None
    if config.resume:
        directory = Path(config.resume).expanduser().resolve()
    elif config.results_dir:
        directory = run_directory(config.results_dir, config)
    strategy = CooperativeStrategy(
        config,
        x0,
        evaluate_fn=server_evaluator(model, test),
        run_dir=directory,
        resume=resumed,
    )
    result = strategy.start(grid)
    if directory is not None:
        result.directory = write_results(result, directory)
        LOG.info("fedcoop: results in %s", result.directory)
    LOG.info("fedcoop: workers' own final models: %s", result.client_evaluation)
    return result


def make_server_app(
    config: RunConfig | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    resumed: dict[str, Any] | None = None,
) -> ServerApp:
    """A ServerApp running `config` (or the run config Flower passes when it is None);
    `on_result` receives the finished run, for callers that run it in-process; `resumed`:
    the checkpoint of config.resume, already read."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        result = run(grid, config or RunConfig.from_mapping(context.run_config), resumed)
        if on_result is not None:
            on_result(result)

    return server_app


app = make_server_app()
