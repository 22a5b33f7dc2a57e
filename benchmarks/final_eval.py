"""What the workers' final evaluation adds to a run: its seconds per `eval-samples`.

After its rounds a run evaluates `eval-workers` (default 100) workers' own final models, each
node on the run's evaluation sample of the test set (`eval-samples`). This runs one short
round of the cross-device shape (m clients, a cohort of 50, FedAvg, the CNN) per sample size,
in this process, and prints `worker-eval-seconds eval-samples=<n> <seconds>` (the run's own
measure of that tail, `final.json`'s `worker-eval-seconds`) and
`eval-ratio eval-samples=<n> <seconds / seconds of the whole test set>`, the baseline being
`eval-samples = 0` (the whole test set) run first.

    python benchmarks/final_eval.py                          # m = 1,000, 0 and 1,000 samples
    python benchmarks/final_eval.py --samples 0,500,1000,2000 --engine inprocess
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages

from benchmarks.overhead import set_threads
from fedcoop.config import RunConfig
from simulations.engines import ENGINES
from simulations.runner import run_config


def eval_seconds(args: argparse.Namespace, samples: int) -> float:
    """The final evaluation's seconds of one round at `samples` evaluation examples."""
    config = RunConfig.from_mapping(
        {
            "algorithm": "fedavg",
            "dataset": args.dataset,
            "model": args.model,
            "num-clients": args.clients,
            "participation": min(1.0, args.cohort / args.clients),
            "num-rounds": 1,
            "tau": 1,
            "eval-workers": args.workers,
            "eval-samples": samples,
            "results-dir": "",
        }
    )
    result = run_config(config, engine=args.engine, quiet=True)
    return result.client_evaluation["worker-eval-seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--cohort", type=int, default=50)
    parser.add_argument("--workers", type=int, default=100, help="eval-workers")
    parser.add_argument(
        "--samples",
        type=lambda raw: [int(n) for n in raw.split(",")],
        default=[0, 1000],
        help="eval-samples values, comma separated; the first is the baseline",
    )
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--dataset", default="mnist-embedded")
    parser.add_argument("--engine", choices=ENGINES, default="vectorized")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    set_threads(args.threads)
    print(
        f"final evaluation: {args.workers} of {args.clients} workers, {args.model} on "
        f"{args.dataset}, engine {args.engine}"
    )
    seconds = {n: eval_seconds(args, n) for n in args.samples}
    for n, s in seconds.items():
        print(f"worker-eval-seconds eval-samples={n} {s:.4f}")
    base = seconds[args.samples[0]]
    for n, s in seconds.items():
        print(f"eval-ratio eval-samples={n} {s / base:.3f}")


if __name__ == "__main__":
    main()
