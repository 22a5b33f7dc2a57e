"""Run one config to completion on either engine, so the CLI and sweeps share one code path.

"simulation" is Flower's simulation engine (Ray, one SuperNode per client): the real
deployment path. "inprocess" runs the same ClientApp through `InProcessGrid` in this process:
no Ray start-up, so small sweeps and tests take seconds. "vectorized" is the in-process grid
that runs each pull's train messages as one batch of the local rule (`VectorizedGrid`): the
same models, the cohort's steps in one vmap; "auto" is the faster of the two in-process
engines for the config (`fastest_engine`). With `ray_address`, the simulation engine runs
on an existing Ray cluster (docs/clusters.md) instead of starting Ray in this process.
"""

from __future__ import annotations

import logging

from clients.client_app import app as client_app
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError, RunFailed
from fedcoop.model_vectors import default_device
from simulations import results
from simulations.engines import AUTO, ENGINE_CHOICES
from simulations.inprocess import InProcessGrid
from simulations.processes import available_cores, check_processes
from simulations.vectorized import VectorizedGrid
from strategies import server_app
from strategies.result import RunResult

#: the in-process engines, by name
GRIDS = {"inprocess": InProcessGrid, "vectorized": VectorizedGrid}
#: the models whose cohorts the vectorized engine runs faster than the in-process one on a
#: CPU: small ones, whose steps are dominated by per-call overhead that one vmap over the
#: cohort shares. For larger models a loop of per-worker calls is as fast or faster on a CPU
#: (docs/engines-measured.md: the MLP about even, the CNN 1.3x against 0.95x the bare
#: loop, benchmarks/gradient_floor.py); on a GPU the batch is where the gain is.
VECTORIZED_ON_CPU = frozenset({"logreg", "linear"})
LOG = logging.getLogger("flwr.fedcoop")


def fastest_engine(config: RunConfig) -> str:
    """The faster in-process engine for `config` here: vectorized on a GPU and for the
    small models on a CPU, in-process otherwise (both give the Flower path's models)."""
    if default_device().type == "cuda" or config.model in VECTORIZED_ON_CPU:
        return "vectorized"
    return "inprocess"


def default_gpus_per_client() -> float:
    """A quarter GPU per simulated client when there is a GPU, so four clients share one."""
    return 0.25 if default_device().type == "cuda" else 0.0


def default_processes() -> int:
    """The in-process engines' worker processes when none are asked for: every core this
    process may use on a CPU; one on a GPU, whose batch needs no more."""
    return 1 if default_device().type == "cuda" else available_cores()


def check_engine(engine: str, ray_address: str | None = None) -> None:
    """Refuse an unknown engine, and a Ray address for an engine that does not use Ray."""
    if engine not in ENGINE_CHOICES:
        raise ConfigError("engine", engine, f"one of {', '.join(ENGINE_CHOICES)}")
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
    processes: int | None = None,
) -> RunResult:
    """Run `config` on `engine` with num-clients nodes; its results go to config.results_dir.

    `processes` (the in-process engines): worker processes that train the cohort, each its
    share of the nodes (None: `default_processes()`; 1: this process alone).

    `ray_address` (simulation only): the Ray cluster to run the clients on, as `ray.init`
    takes it ("HOST:PORT" of its head node, or "auto"); Flower's Ray backend passes it on
    through its `init_args`, so the clients' actors spread over every node of the cluster.
    """
    check_engine(engine, ray_address)
    if quiet:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    config, resumed = server_app.with_checkpoint(config)  # a resumed run keeps its node count
    if engine == AUTO:
        engine = fastest_engine(config)
        LOG.info("fedcoop: engine %s (auto)", engine)
    if engine in GRIDS:
        count = default_processes() if processes is None else processes
        check_processes(count)
        grid = GRIDS[engine](client_app, config.num_clients, seed=config.seed, processes=count)
        try:
            return server_app.run(grid, config, resumed, results)
        finally:
            grid.close()
    if processes not in (None, 1):
        raise ConfigError("processes", processes, "1 for the simulation engine (Ray's actors)")
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
