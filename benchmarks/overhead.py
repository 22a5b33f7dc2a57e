"""What each fedcoop engine costs over a bare PyTorch loop doing the same SGD.

Runs Local SGD with m workers x tau steps x R rounds in this process: first as a plain loop over
PyTorch models with the same data, batch size, averaging and per-round evaluation of the
average (the baseline), then on each engine through `simulations.runner.run_config`:
"vectorized" (the in-process grid running a round's local steps as one vmap), "inprocess" (the
ClientApp on real Messages, one node after another) and "simulation" (Flower's simulation
engine: Ray actors, SuperLink state, Messages, the stateful ClientApp and the strategy). Prints
seconds per round for each, the start-up apart, and last one `overhead-ratio <engine>
<engine seconds / bare seconds>` line per engine, where an engine's seconds count the rounds
after the first only (the run's `wall-time` from the end of round 1 to the last round's reply,
the bare loop's likewise): round 1 also carries one-time set-up, counted in the start-up.

    python benchmarks/overhead.py                 # MNIST CNN, 16 clients, tau 8, 5 rounds
    python benchmarks/overhead.py --rounds 10 --clients 8 --tau 4 --model mlp
    python benchmarks/overhead.py --engines vectorized,inprocess   # no Ray
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages

import torch

from fedcoop import participation, workload
from fedcoop.config import RunConfig
from fedcoop.model_vectors import (
    default_device,
    evaluate,
    load_model_vector,
    loss_function,
    model_vector,
)
from simulations.engines import ENGINES
from simulations.runner import run_config
from strategies.server_app import initial_model

#: the baseline's name in the output
BARE = "bare"
#: the averaging rules the bare loop can do (a star: every worker starts from the average)
BARE_ALGORITHMS = ("local-sgd", "fedavg")
MODELS = ("cnn", "mlp", "logreg")


@dataclass(frozen=True)
class Timing:
    """Seconds of one run: when each round ended (seconds into its rounds) and in all."""

    ends: list[float]
    total: float

    @property
    def rounds(self) -> float:
        """The seconds the ratios compare: every round after the first, which also carries
        one-time set-up (the local rule, the first batches' buffers), or the only one."""
        return self.ends[-1] - self.ends[0] if len(self.ends) > 1 else self.ends[0]

    @property
    def per_round(self) -> float:
        return self.rounds / max(1, len(self.ends) - 1)

    @property
    def startup(self) -> float:
        """Everything but those rounds: building the nodes, Ray's start, round 1, the final
        sync."""
        return self.total - self.rounds


def bare(config: RunConfig) -> Timing:
    """The same Local SGD as a plain loop over PyTorch models in one process: each round the
    sampled workers (all of them at participation 1) start from the average, take tau steps
    of batch-size samples each (the whole shard when it is smaller, or at batch size 0), and
    the server averages them (sample-weighted for fedavg) and evaluates the average."""
    if config.algorithm not in BARE_ALGORITHMS:
        raise ValueError(f"the bare loop runs {', '.join(BARE_ALGORITHMS)}")
    start = time.perf_counter()
    device = default_device()
    train, test = workload.load_split(config)
    m = config.num_clients
    shards = [workload.shard(config, i, m) for i in range(m)]
    shards = [(s.x.to(device), s.y.to(device)) for s in shards]
    cohort = len(participation.sample(config.seed, 1, m, config.participation))
    x0 = model_vector(initial_model(config)).to(device)
    workers = [workload.build_model(config).to(device) for _ in range(cohort)]
    optimizers = [torch.optim.SGD(w.parameters(), lr=config.lr) for w in workers]
    loss_fn = loss_function(train)
    generator = torch.Generator().manual_seed(config.seed)
    average = x0.clone()
    rounds_start = time.perf_counter()
    ends = []
    for round_ in range(1, config.num_rounds + 1):
        sampled = sorted(participation.sample(config.seed, round_, m, config.participation))
        for model, opt, i in zip(workers, optimizers, sampled, strict=True):
            x, y = shards[i]
            rows = min(config.batch_size or len(y), len(y))
            load_model_vector(model, average)
            model.train()
            for _ in range(config.tau):
                idx = torch.randint(len(y), (rows,), generator=generator).to(device)
                opt.zero_grad()
                loss_fn(model(x[idx]), y[idx]).backward()
                opt.step()
        weights = torch.tensor(
            [len(shards[i][1]) if config.algorithm == "fedavg" else 1.0 for i in sampled],
            dtype=x0.dtype,
            device=device,
        )
        models = torch.stack([model_vector(w) for w in workers])
        average = (weights[:, None] * models).sum(dim=0) / weights.sum()
        load_model_vector(workers[0], average)
        evaluate(workers[0], test)
        ends.append(time.perf_counter() - rounds_start)
    return Timing(ends, time.perf_counter() - start)


def timed(
    config: RunConfig, engine: str, cpus_per_client: float = 1.0, processes: int = 1
) -> Timing:
    """The run of `config` on `engine` (or the bare loop), timed; `processes`: the
    in-process engines' worker processes (1: the one process the bare loop runs in)."""
    if engine == BARE:
        return bare(config)
    start = time.perf_counter()
    result = run_config(
        config,
        engine=engine,
        quiet=True,
        cpus_per_client=cpus_per_client,
        processes=processes if engine != "simulation" else None,
    )
    total = time.perf_counter() - start
    return Timing([row["wall-time"] for row in result.rounds], total)


def engine_list(raw: str) -> list[str]:
    """--engines: a comma-separated subset of the engines, in the order given."""
    engines = [e.strip() for e in raw.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise argparse.ArgumentTypeError(f"engines are some of {', '.join(ENGINES)}")
    return engines


def engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of both benchmarks that say what runs where."""
    parser.add_argument("--model", choices=MODELS, default="cnn")
    parser.add_argument(
        "--engines",
        type=engine_list,
        default=["vectorized", "inprocess", "simulation"],
        help="comma-separated engines to time against the bare loop (default: all)",
    )
    parser.add_argument(
        "--cpus-per-client",
        type=float,
        default=1.0,
        help="Ray resources per client: cores / this many clients train at once (each Ray "
        "actor runs torch on its share of the cores: Ray sets its OMP_NUM_THREADS)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads of the process that runs the bare loop and the in-process engines "
        "(default: torch's, one per core); small models on a busy machine run much faster on 1",
    )


def set_threads(threads: int | None) -> None:
    """--threads, for the process that runs the rounds (the simulation's driver too)."""
    if threads is not None:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tau", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    engine_arguments(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    config = RunConfig.from_mapping(
        {
            "algorithm": "local-sgd",
            "num-clients": args.clients,
            "tau": args.tau,
            "num-rounds": args.rounds,
            "batch-size": args.batch_size,
            "model": args.model,
            "results-dir": "",
        }
    )
    steps = args.clients * args.tau * args.rounds
    print(
        f"SGD steps: {args.clients} clients x tau {args.tau} x {args.rounds} rounds = {steps}"
        f" (batch {args.batch_size}, {args.model}, {config.dataset},"
        f" {torch.get_num_threads()} torch threads)"
    )
    baseline = timed(config, BARE)
    print(f"seconds-per-round {BARE} {baseline.per_round:.4f}")
    ratios = {}
    for engine in args.engines:
        timing = timed(config, engine, args.cpus_per_client)
        print(f"seconds-per-round {engine} {timing.per_round:.4f}")
        print(f"start-up {engine} {timing.startup:.2f}")
        ratios[engine] = timing.rounds / baseline.rounds
    for engine, ratio in ratios.items():
        print(f"overhead-ratio {engine} {ratio:.2f}")


if __name__ == "__main__":
    main()
