"""The Flower ServerApp: read the run config, run the strategy, hand the results to a writer.

`make_server_app` reads ``context.run_config`` (what ``flwr run`` passes), or binds an explicit
config, for ``run_simulation``, which passes an empty run config. Naming the run directory and
writing the results files belong to the experiment layer above this one (imports run one way:
fedcoop <- clients <- strategies <- simulations), so the caller passes them in as a
`ResultsWriter`; the app ``flwr run .`` loads is `simulations.app.app`, which binds
`simulations.results`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcoop import algorithms, checkpoint, data, workload
from fedcoop.config import RunConfig
from fedcoop.errors import RunFailed
from fedcoop.model_vectors import (
    default_device,
    evaluate,
    layout,
    load_model_vector,
    model_vector,
)
from strategies import stock
from strategies.loop import CooperativeStrategy
from strategies.result import EvaluateFn, RunResult

LOG = logging.getLogger("flwr.fedcoop")


class ResultsWriter(Protocol):
    """Where a run's files go: the module `simulations.results` is the project's writer."""

    def run_directory(self, root: str | Path, config: RunConfig) -> Path:
        """A fresh run directory under `root` (checkpoints are written there while it runs)."""
        ...

    def write_results(self, result: RunResult, path: Path) -> Path:
        """Write the finished run's files into `path`; return the directory written."""
        ...


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


def run(
    grid: Grid,
    config: RunConfig,
    resumed: dict[str, Any] | None = None,
    results: ResultsWriter | None = None,
) -> RunResult:
    """One run of `config` over `grid`, its results written to config.results_dir by `results`.

    With `resume` set to a run directory, the run continues from that directory's
    checkpoint, under the config it was started with, and writes its results there;
    `resumed` is that checkpoint when the caller has already read it (`with_checkpoint`).
    A config with a results-dir or a resume needs a writer: refused without one, rather than
    silently leaving no files.
    """
    if results is None and (config.results_dir or config.resume):
        raise ValueError(
            f"results-dir={config.results_dir!r}, resume={config.resume!r}: no results writer "
            "to write them (pass results=simulations.results, or results-dir='')"
        )
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
    if results is not None and config.resume:
        directory = Path(config.resume).expanduser().resolve()
    elif results is not None and config.results_dir:
        directory = results.run_directory(config.results_dir, config)
    entries = layout(model)
    evaluate_fn = server_evaluator(model, test)
    try:
        if algorithms.is_flower(config.algorithm):
            if directory is not None and config.checkpoint_every:
                LOG.warning("fedcoop: %s writes no checkpoints", config.algorithm)
            result = stock.run(grid, config, x0, entries, evaluate_fn)
        else:
            result = CooperativeStrategy(
                config,
                x0,
                evaluate_fn=evaluate_fn,
                run_dir=directory,
                resume=resumed,
                lr=workload.schedule(config).lr,
            ).start(grid)
    except RunFailed as failed:
        if directory is not None and results is not None and failed.partial is not None:
            # its settled rounds and why it stopped stay on disk, with final.json's "failed"
            failed.partial.directory = results.write_results(failed.partial, directory)
        raise
    if directory is not None and results is not None:
        result.directory = results.write_results(result, directory)
        LOG.info("fedcoop: results in %s", result.directory)
    LOG.info("fedcoop: workers' own final models: %s", result.client_evaluation)
    return result


def make_server_app(
    config: RunConfig | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    resumed: dict[str, Any] | None = None,
    results: ResultsWriter | None = None,
) -> ServerApp:
    """A ServerApp running `config` (or the run config Flower passes when it is None);
    `on_result` receives the finished run, for callers that run it in-process; `resumed`:
    the checkpoint of config.resume, already read; `results` writes the run's files (`run`)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = config or RunConfig.from_mapping(context.run_config)
        result = run(grid, run_config, resumed, results)
        if on_result is not None:
            on_result(result)

    return server_app
