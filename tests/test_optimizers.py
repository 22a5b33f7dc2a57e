"""The local optimizer as a seam (fedcoop.optimizers): one declaration, here Adam with weight
decay and FedProx's proximal term written in this file alone, runs alike in the batched
rule and in the reference; the SGD pieces are torch.optim.SGD's rule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pytest
import torch

from fedcoop import algorithms, workload
from fedcoop.local_rule import LocalRule, WorkerState
from fedcoop.model_vectors import loss_function
from fedcoop.optimizers import (
    MOMENTUM,
    SGD,
    Array,
    LocalOptimizer,
    LocalSGD,
    Momentum,
    Proximal,
    WeightDecay,
    sgd,
)
from fedcoop.spec import ClientRule, UpdateRule, reference_trajectory
from tests.conftest import (
    assert_paths_agree,
    gradient_oracle,
    least_squares_config,
    run_in_process,
    x0_of,
)


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma and Ba, 2015), bias-corrected; the step count is kept per entry, so that
    every state array is shaped like the gradient."""

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    state_names: ClassVar[tuple[str, ...]] = ("adam-m", "adam-v", "adam-t")

    def __call__(self, g: Array, state: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        m = self.b1 * state["adam-m"] + (1 - self.b1) * g
        v = self.b2 * state["adam-v"] + (1 - self.b2) * g * g
        t = state["adam-t"] + 1
        d = (m / (1 - self.b1**t)) / ((v / (1 - self.b2**t)) ** 0.5 + self.eps)
        return d, {"adam-m": m, "adam-v": v, "adam-t": t}


ADAM_PROX = LocalOptimizer(terms=(WeightDecay(0.01), Proximal(0.5)), transforms=(Adam(),))


def _batched_run(
    optimizer: LocalOptimizer, update_rule: UpdateRule, rounds: int
) -> list[WorkerState]:
    """Local SGD's rounds on the least-squares workers, every worker in one batch of the
    rule: tau local steps, then the sync x_i <- w_ii x_i + sum_j w_ji x_j."""
    config = least_squares_config(algorithm="local-sgd")
    m, w = config.num_clients, algorithms.resolve(config).w
    train, _ = workload.load_split(config)
    rule = LocalRule(
        workload.build_model(config),
        LocalSGD(lr=config.lr, batch_size=0, optimizer=optimizer),
        torch.device("cpu"),
        torch.float64,
        loss_fn=loss_function(train),
    )
    x0 = torch.from_numpy(x0_of(config))
    workers = [rule.worker(workload.shard(config, i, m), x0) for i in range(m)]
    for r in range(rounds + 1):
        if r:
            x = torch.stack([wk.x for wk in workers])
            mixes = [sum(w[j, i] * x[j] for j in range(m) if j != i) for i in range(m)]
            weights = [w[i, i] for i in range(m)]
            rule.apply_sync(workers, weights, mixes, ClientRule.MIX, update_rule)
        if r < rounds:
            rule.run(workers, config.tau, update_rule, [torch.Generator() for _ in workers])
    return workers


def _reference(optimizer: LocalOptimizer, update_rule: UpdateRule, rounds: int) -> np.ndarray:
    """The matrix rule's workers after the same rounds (d x m)."""
    config = least_squares_config(algorithm="local-sgd")
    spec = replace(algorithms.resolve(config), rule=update_rule)
    steps = rounds * config.tau
    grad = gradient_oracle(config)
    path = reference_trajectory(spec, x0_of(config), grad, config.lr, steps, optimizer=optimizer)
    return path[-1][:, : config.num_clients]


@pytest.mark.cross_path
@pytest.mark.parametrize("update_rule", list(UpdateRule))
def test_an_optimizer_declared_once_runs_alike_in_the_batched_rule_and_the_reference(
    update_rule: UpdateRule,
) -> None:
    """Adam with weight decay and a proximal term, declared above and nowhere in fedcoop:
    4 rounds of tau 3 on 5 workers, held back under Remark 1 or not."""
    workers = _batched_run(ADAM_PROX, update_rule, rounds=4)
    ref = _reference(ADAM_PROX, update_rule, rounds=4)
    assert_paths_agree(torch.stack([w.x for w in workers]), ref.T)
    assert set(workers[0].opt_state) == set(Adam.state_names)
    # every piece moves the result: Adam is not SGD, and the proximal term pulls back
    for other in (SGD, replace(ADAM_PROX, terms=ADAM_PROX.terms[:1])):
        assert np.abs(_reference(other, update_rule, rounds=4) - ref).max() > 1e-3


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_sgd_pieces_are_torch_optim_sgd(nesterov: bool) -> None:
    """Weight decay folded into the gradient, then momentum without dampening."""
    generator = torch.Generator().manual_seed(0)
    param = torch.randn(7, dtype=torch.float64, generator=generator, requires_grad=True)
    torch_sgd = torch.optim.SGD([param], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    declared = sgd(0.9, nesterov=nesterov, weight_decay=0.01)
    x = param.detach().clone()
    state = {MOMENTUM: torch.zeros_like(x)}
    for _ in range(5):
        g = torch.randn(7, dtype=torch.float64, generator=generator)
        param.grad = g.clone()
        torch_sgd.step()
        d, state = declared.direction(declared.gradient(g, x, x), state)
        x = x - 0.1 * d
    assert_paths_agree(x, param.detach())


def test_an_optimizer_refuses_two_pieces_that_keep_one_state_array() -> None:
    with pytest.raises(ValueError, match="momentum"):
        LocalOptimizer(transforms=(Momentum(0.9), Momentum(0.5, nesterov=True)))


@pytest.mark.cross_path
def test_fedprox_follows_its_paper_on_the_flower_path() -> None:
    """FedProx (Li et al., MLSys 2020, Algorithm 2), written here from the paper: each device
    runs tau gradient steps on h_k(w) = F_k(w) + (mu/2)||w - w^t||^2 from the server's w^t,
    and the server takes the sample-weighted average. The run goes through the real
    ClientApp and strategy."""
    config = least_squares_config(algorithm="fedprox", prox_mu=0.5)
    result, _ = run_in_process(config)
    grad = gradient_oracle(config)
    m = config.num_clients
    counts = np.array([len(workload.shard(config, i, m)) for i in range(m)], dtype=np.float64)
    p = counts / counts.sum()
    w = x0_of(config)
    for _ in range(config.num_rounds):
        local = []
        for k in range(m):
            x = w.copy()
            for _ in range(config.tau):
                x = x - config.lr * (grad(k, x, 0) + config.prox_mu * (x - w))
            local.append(x)
        w = sum(pk * xk for pk, xk in zip(p, local, strict=True))
    assert result.workers is not None
    for worker in result.workers:
        assert_paths_agree(worker, w)
    # the term moves the result: FedAvg from the same start ends elsewhere
    fedavg, _ = run_in_process(replace(config, algorithm="fedavg", prox_mu=0.0))
    assert fedavg.workers is not None
    assert np.abs(fedavg.workers[0] - w).max() > 1e-3
