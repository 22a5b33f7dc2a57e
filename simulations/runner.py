"""Run one config to completion on either engine, so the CLI and sweeps share one code path.

"simulation" is Flower's simulation engine (Ray, one SuperNode per client): the real
deployment path. "inprocess" runs the same ClientApp through `InProcessGrid` in this process:
no Ray start-up, so small sweeps and tests take seconds. "vectorized" is the in-process grid
that runs each pull's train messages as one batch of the local rule (`VectorizedGrid`): the
same models, the cohort's steps in one vmap. With `ray_address`, the simulation engine runs
on an existing Ray cluster (docs/clusters.md) instead of starting Ray in this process.
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


def check_engine(engine: str, ray_address: str | None = None) -> None:
    """Refuse an unknown engine, and a Ray address for an engine that does not use Ray."""
    if engine not in ENGINES:
        raise ConfigError("engine", engine, f"one of {', '.join(ENGINES)}")
    if ray_address is None:
        return
    if engine != "simulation":
        raise ConfigError(
            "ray-address", ray_address, "needs engine simulation (the others run in this process)"
        )
    if not isinstance(ray_address, str) or not ray_address.strip():
        raise ConfigError("ray-address", ray_address, "a Ray head node's HOST:PORT, or auto")


def run_config(
    config: RunConfig,
    *,
    engine: str = "simulation",
    quiet: bool = False,
    cpus_per_client: float = 1.0,
    gpus_per_client: float | None = None,
    ray_address: str | None = None,
) -> RunResult:
    """Run `config` on `engine` with num-clients nodes; its results go to config.results_dir.

    `ray_address` (simulation only): the Ray cluster to run the clients on, as `ray.init`
    takes it ("HOST:PORT" of its head node, or "auto"); Flower's Ray backend passes it on
    through its `init_args`, so the clients' actors spread over every node of the cluster.
    """
    check_engine(engine, ray_address)
    if quiet:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    config, resumed = server_app.with_checkpoint(config)  # a resumed run keeps its node count
    if engine in GRIDS:
        grid = GRIDS[engine](client_app, config.num_clients, seed=config.seed)
        return server_app.run(grid, config, resumed, results)
    from flwr.simulation import run_simulation  # Ray: only this engine pays for its import

    finished: list[RunResult] = []
    init_args = {} if ray_address is None else {"address": ray_address}
    run_simulation(
        server_app=server_app.make_server_app(config, finished.append, resumed, results),
        client_app=client_app,
        num_supernodes=config.num_clients,
        backend_config={
            "init_args": init_args,
            "client_resources": {
                "num_cpus": cpus_per_client,
                "num_gpus": default_gpus_per_client()
                if gpus_per_client is None
                else gpus_per_client,
            },
        },
    )
    if not finished:
        raise RunFailed(f"{config.algorithm}: the run did not finish; see the log above")
    return finished[0]
