"""Run one config to completion on either engine, so the CLI and sweeps share one code path.

"simulation" is Flower's simulation engine (Ray, one SuperNode per client): the real
deployment path. "inprocess" runs the same ClientApp through `InProcessGrid` in this process:
no Ray start-up, so small sweeps and tests take seconds. "vectorized" is the in-process grid
that runs each pull's train messages as one batch of the local rule (`VectorizedGrid`): the
same models, the cohort's steps in one vmap.
"""

from __future__ import annotations

import logging

import torch

from clients.client_app import app as client_app
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError, RunFailed
from simulations import results
from simulations.engines import ENGINES
from simulations.inprocess import InProcessGrid
from simulations.vectorized import VectorizedGrid
from strategies import server_app
from strategies.cooperative import RunResult

#: the in-process engines, by name
GRIDS = {"inprocess": InProcessGrid, "vectorized": VectorizedGrid}


def default_gpus_per_client() -> float:
    """A quarter GPU per simulated client when there is a GPU, so four clients share one."""
    return 0.25 if torch.cuda.is_available() else 0.0


def run_config(
    config: RunConfig,
    *,
    engine: str = "simulation",
    quiet: bool = False,
    cpus_per_client: float = 1.0,
    gpus_per_client: float | None = None,
) -> RunResult:
    """Run `config` on `engine` with num-clients nodes; its results go to config.results_dir."""
    if engine not in ENGINES:
        raise ConfigError("engine", engine, f"one of {', '.join(ENGINES)}")
    if quiet:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    config, resumed = server_app.with_checkpoint(config)  # a resumed run keeps its node count
    if engine in GRIDS:
        grid = GRIDS[engine](client_app, config.num_clients, seed=config.seed)
        return server_app.run(grid, config, resumed, results)
    from flwr.simulation import run_simulation  # Ray: only this engine pays for its import

    finished: list[RunResult] = []
    run_simulation(
        server_app=server_app.make_server_app(config, finished.append, resumed, results),
        client_app=client_app,
        num_supernodes=config.num_clients,
        backend_config={
            "client_resources": {
                "num_cpus": cpus_per_client,
                "num_gpus": default_gpus_per_client()
                if gpus_per_client is None
                else gpus_per_client,
            }
        },
    )
    if not finished:
        raise RunFailed(f"{config.algorithm}: the run did not finish; see the log above")
    return finished[0]
