"""How fast can any batched engine take a cohort's gradients on this machine?

For the fully connected models (logreg, mlp), times one local step's gradients of C
workers on their own batches three ways, in this process:

- "loop": one worker after another, each a forward and backward pass of its nn.Module (the
  part of a step the bare loop of benchmarks/overhead.py spends in autograd);
- "engine": the vectorized engine's own call (`fedcoop.local_rule.LocalRule`'s gradients:
  one vmap of the loss over the stacked parameters and one backward pass);
- "bmm": the same layers written by hand as batched matrix products over the stacked
  weights (torch.baddbmm), with one backward pass: no per-worker Python and no vmap
  dispatch, the least a batched engine could do with these kernels.

Prints milliseconds per step for each and one `speedup <way> <loop ms / way ms>` line per
way. The engine's target of 3x the bare loop for logreg and the MLP needs at least that
speedup here, with nothing else in its round; "bmm" bounds what vectorizing can give on
this CPU (the bmm models are this benchmark's only, to measure that bound; engines run
the real model through the local rule).

    python benchmarks/gradient_floor.py --model mlp --clients 16 --batch-size 32 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages

import torch
from torch import nn

from fedcoop import workload
from fedcoop.config import RunConfig
from fedcoop.local_rule import LocalRule
from fedcoop.model_vectors import loss_function
from fedcoop.optimizers import LocalSGD


def timed(step: Callable[[], object], repeats: int) -> float:
    """Milliseconds per call of `step`, after three warm-up calls."""
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("logreg", "mlp"), default="mlp")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = RunConfig.from_mapping({"model": args.model, "results-dir": ""})
    train, _ = workload.load_split(config)
    model = workload.build_model(config)
    loss_fn = loss_function(train)
    c, b = args.clients, args.batch_size
    generator = torch.Generator().manual_seed(0)
    idx = torch.randint(len(train.y), (c, b), generator=generator)
    inputs, targets = train.x[idx], train.y[idx]

    def loop() -> None:
        for k in range(c):
            model.zero_grad()
            loss_fn(model(inputs[k]), targets[k]).backward()

    rule = LocalRule(model, LocalSGD(lr=0.1), torch.device("cpu"), train.x.dtype, loss_fn=loss_fn)
    base = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    stacked = base.repeat(c, 1)

    def engine() -> None:
        rule._gradients(stacked, inputs, targets)  # the vectorized engine's gradient call

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    weights = [m.weight.detach().repeat(c, 1, 1) for m in linears]
    biases = [m.bias.detach().repeat(c, 1) for m in linears]
    flat = inputs.reshape(c, b, -1)

    def bmm() -> None:
        params = [t.requires_grad_(True) for t in (*weights, *biases)]
        h = flat
        for k, (w, bias) in enumerate(zip(weights, biases, strict=True)):
            h = torch.baddbmm(bias[:, None, :], h, w.transpose(1, 2))
            if k < len(weights) - 1:
                h = torch.relu(h)
        losses = nn.functional.cross_entropy(
            h.reshape(c * b, -1), targets.reshape(-1), reduction="none"
        )
        torch.autograd.grad(losses.view(c, b).mean(dim=1).sum(), params)

    print(
        f"{args.model}: {c} workers x batch {b}, {torch.get_num_threads()} torch threads, "
        f"ms per step's gradients"
    )
    times = {
        name: timed(way, args.repeats)
        for name, way in (("loop", loop), ("engine", engine), ("bmm", bmm))
    }
    for name, ms in times.items():
        print(f"ms {name} {ms:.2f}")
    for name in ("engine", "bmm"):
        print(f"speedup {name} {times['loop'] / times[name]:.2f}")


if __name__ == "__main__":
    main()
