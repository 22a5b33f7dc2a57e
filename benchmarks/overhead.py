"""What fedcoop's Flower simulation path costs over a bare PyTorch loop doing the same SGD.

Runs Local SGD with m workers x tau steps x R rounds twice in this process: once through
Flower's simulation engine (run_simulation: Ray actors, SuperLink state, Messages, the
stateful ClientApp and the strategy, with the server's per-round evaluation), once as a plain
single-process loop over m PyTorch models with the same data, batch size, averaging and
per-round evaluation. Prints both times and, last, `overhead-ratio <simulation / bare>`,
where the simulation time counts the rounds only (from the first train message to the last
reply; Ray's start-up is printed separately).

    python benchmarks/overhead.py                 # MNIST CNN, 16 clients, tau 8, 5 rounds
    python benchmarks/overhead.py --rounds 10 --clients 8 --tau 4
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import torch
from flwr.simulation import run_simulation

from clients.client_app import app as client_app
from fedcoop import workload
from fedcoop.config import RunConfig
from fedcoop.training import evaluate, load_model_vector, model_vector
from strategies.cooperative import RunResult
from strategies.server_app import initial_model, make_server_app


def simulated(config: RunConfig, cpus_per_client: int) -> tuple[float, float]:
    """(seconds of the rounds, seconds in all) through Flower's simulation engine; each Ray
    actor gets `cpus_per_client` cores, so cores / cpus_per_client clients train at once."""
    results: list[RunResult] = []
    start = time.perf_counter()
    run_simulation(
        server_app=make_server_app(config, on_result=results.append),
        client_app=client_app,
        num_supernodes=config.num_clients,
        backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0}},
    )
    total = time.perf_counter() - start
    return results[0].rounds[-1]["wall-time"], total


def bare(config: RunConfig) -> float:
    """Seconds for the same Local SGD as a plain loop over m models in one process."""
    _, test = workload.load_split(config)
    shards = [workload.shard(config, i, config.num_clients) for i in range(config.num_clients)]
    x0 = model_vector(initial_model(config))
    workers = [workload.build_model(config) for _ in shards]
    optimizers = [torch.optim.SGD(w.parameters(), lr=config.lr) for w in workers]
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    average = x0.clone()
    start = time.perf_counter()
    for _ in range(config.num_rounds):
        for model, opt, shard in zip(workers, optimizers, shards, strict=True):
            load_model_vector(model, average)
            for _ in range(config.tau):
                idx = torch.randint(len(shard), (config.batch_size,), generator=generator)
                opt.zero_grad()
                loss_fn(model(shard.x[idx]), shard.y[idx]).backward()
                opt.step()
        average = torch.stack([model_vector(w) for w in workers]).mean(dim=0)
        load_model_vector(workers[0], average)
        evaluate(workers[0], test)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tau", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="cnn")
    parser.add_argument(
        "--cpus-per-client",
        type=int,
        default=1,
        help="Ray resources per client: cores / this many clients train at once (each Ray "
        "actor runs torch on its share of the cores); the bare loop uses every core",
    )
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    config = RunConfig.from_mapping(
        {
            "algorithm": "local-sgd",
            "num-clients": args.clients,
            "tau": args.tau,
            "num-rounds": args.rounds,
            "model": args.model,
            "results-dir": "",
        }
    )
    steps = args.clients * args.tau * args.rounds
    bare_s = bare(config)
    rounds_s, total_s = simulated(config, args.cpus_per_client)
    print(f"SGD steps: {args.clients} clients x tau {args.tau} x {args.rounds} rounds = {steps}")
    print(f"bare PyTorch loop: {bare_s:.2f} s")
    print(f"fedcoop simulation: {rounds_s:.2f} s for the rounds, {total_s:.2f} s with start-up")
    print(f"overhead-ratio {rounds_s / bare_s:.2f}")


if __name__ == "__main__":
    main()
