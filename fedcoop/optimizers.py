"""The local optimizer as pieces: declared once, run by the batched rule and the reference.

A worker's local optimizer turns the stochastic gradient g of its loss at its model x into
the direction d of its step x <- x - lr d. As with Optax's transforms, it is a declaration
of small pure pieces, and the same declaration runs in `fedcoop.local_rule.LocalRule` (torch
tensors, a batch of workers as rows) and in `fedcoop.spec.reference_trajectory`
(numpy float64, one worker's vector at a time): every piece is element-wise arithmetic that
numpy arrays and torch tensors share, so it reads neither the library nor the layout, and a
worker's result does not depend on its neighbours in a batch.

There are two kinds of piece because Remark 1 holds the last gradient of a round back and
applies it after the sync:

- a `Term` is the gradient of one term of the local objective (weight decay, FedProx's
  proximal term), evaluated where the loss's gradient was taken and added to it there, so a
  held-back gradient carries the terms of the unmixed model, as torch.optim.SGD folds
  weight decay into the gradient;
- a `Transform` turns that gradient and its named per-worker state arrays into a direction
  and the new state (heavy-ball or Nesterov momentum; Adam is one more class), when the step
  is applied. A state array a worker does not hold yet is zeros, as torch's first momentum
  step reads. The names are those the worker's state, checkpoints and messages carry.

A transform may also act once a round's steps are done (`end_round`: SCAFFOLD's control
variate update), on the round's start and end and the sum of its learning rates.

Adding a local optimizer is one such class and its use in a `LocalOptimizer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

#: a numpy array or a torch tensor: the pieces use only the arithmetic the two share
Array = Any

#: the heavy-ball buffer's name in `WorkerState`, the state files and the messages
MOMENTUM = "momentum"
#: SCAFFOLD's arrays: the server's control variate c as the worker last received it, the
#: worker's own c_i, and the change of c_i in its last round (which its reply carries)
SERVER_CONTROL, CONTROL, CONTROL_DELTA = "server-control", "control", "control-delta"


class Term(Protocol):
    """The gradient of a term of the local objective at x; `anchor` is the worker's model
    at the start of the round (FedProx's x^t)."""

    def __call__(self, x: Array, anchor: Array) -> Array: ...


class Transform(Protocol):
    """(gradient, state) -> (direction, new state): a stateful step of the chain."""

    #: the per-worker state arrays it reads and returns, each shaped like the gradient
    state_names: ClassVar[tuple[str, ...]]

    def __call__(self, g: Array, state: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]: ...


@dataclass(frozen=True)
class WeightDecay:
    """(wd/2) ||x||^2, torch.optim.SGD's weight_decay."""

    wd: float

    def __call__(self, x: Array, anchor: Array) -> Array:
        return self.wd * x


@dataclass(frozen=True)
class Proximal:
    """FedProx's (mu/2) ||x - anchor||^2: keeps a round's local steps near its start."""

    mu: float

    def __call__(self, x: Array, anchor: Array) -> Array:
        return self.mu * (x - anchor)


@dataclass(frozen=True)
class Momentum:
    """torch.optim.SGD's momentum without dampening: buf <- mu buf + g; the direction is
    g + mu buf (Nesterov) or buf."""

    mu: float
    nesterov: bool = False
    state_names: ClassVar[tuple[str, ...]] = (MOMENTUM,)

    def __call__(self, g: Array, state: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        buf = self.mu * state[MOMENTUM] + g
        return (g + self.mu * buf if self.nesterov else buf), {MOMENTUM: buf}


@dataclass(frozen=True)
class ControlVariates:
    """SCAFFOLD's local rule (Karimireddy et al., ICML 2020, Algorithm 1, option II):
    each step's direction is g - c_i + c; when the round's steps are done,
    c_i+ = c_i - c + (x - y_i) / (sum of the round's learning rates) (K eta_l in the
    paper, whose lr is constant), and the worker reports x + global_lr (y_i - x), so that
    the server's plain average of the reports is x + eta_g mean(y_i - x)."""

    global_lr: float = 1.0
    state_names: ClassVar[tuple[str, ...]] = (SERVER_CONTROL, CONTROL, CONTROL_DELTA)

    def __call__(self, g: Array, state: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        return g - state[CONTROL] + state[SERVER_CONTROL], {}

    def end_round(
        self, start: Array, end: Array, lr_sum: Array, steps: int, state: Mapping[str, Array]
    ) -> tuple[Array, dict[str, Array]]:
        """(the model to report, the new state) of a round from `start` to `end`."""
        own = state[CONTROL] - state[SERVER_CONTROL] + (start - end) / lr_sum
        reported = start + self.global_lr * (end - start)
        return reported, {CONTROL: own, CONTROL_DELTA: own - state[CONTROL]}


def momentum_norm(steps: int, rho: float) -> float:
    """||a_i||_1 of FedNova (eq. 6 and Appendix): how much a round of `steps` SGD steps with
    heavy-ball momentum `rho` (its buffer zero at the round's start) moves per unit
    gradient, (steps - rho (1 - rho^steps) / (1 - rho)) / (1 - rho); `steps` without."""
    if rho == 0:
        return float(steps)
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


@dataclass(frozen=True)
class NormalizedAveraging:
    """FedNova's local side (Wang, Liu, Liang, Joshi, Poor, NeurIPS 2020): a worker that ran
    tau_i steps reports x + (tau_eff / a_i) (y_i - x), a_i = `momentum_norm`(tau_i, rho), so
    that the server's p-weighted average of the reports is FedNova's
    x - tau_eff sum_i p_i d_i with d_i = (x - y_i) / a_i: each worker's progress normalised
    by its own number of steps. The momentum buffer restarts at zero each round, as the
    paper's a_i assumes. The steps themselves are plain: the direction is the gradient."""

    tau_eff: float
    rho: float = 0.0
    state_names: ClassVar[tuple[str, ...]] = ()

    def __call__(self, g: Array, state: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        return g, {}

    def end_round(
        self, start: Array, end: Array, lr_sum: Array, steps: int, state: Mapping[str, Array]
    ) -> tuple[Array, dict[str, Array]]:
        reported = start + (self.tau_eff / momentum_norm(steps, self.rho)) * (end - start)
        restart = {MOMENTUM: 0 * state[MOMENTUM]} if MOMENTUM in state else {}
        return reported, restart


@dataclass(frozen=True)
class LocalOptimizer:
    """The terms added to a gradient where it is taken, then the transforms that turn it
    into the step's direction, in order. With neither it is plain SGD: d = g."""

    terms: tuple[Term, ...] = ()
    transforms: tuple[Transform, ...] = ()

    def __post_init__(self) -> None:
        names = self.state_names
        if len(set(names)) != len(names):
            raise ValueError(f"two transforms keep state of one name: {names}")

    @property
    def state_names(self) -> tuple[str, ...]:
        """Every state array a worker keeps for this optimizer."""
        return tuple(name for t in self.transforms for name in t.state_names)

    def gradient(self, g: Array, x: Array, anchor: Array) -> Array:
        """g plus every term's gradient at x (the model g was taken at)."""
        for term in self.terms:
            g = g + term(x, anchor)
        return g

    def direction(self, g: Array, state: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        """(direction, new state) of a step with gradient g; `state` holds every name of
        `state_names` (zeros before the worker's first step)."""
        new: dict[str, Array] = {}
        for transform in self.transforms:
            g, out = transform(g, state)
            new |= out
        return g, new

    @property
    def ends_rounds(self) -> bool:
        """Whether a piece acts when a round's steps are done (SCAFFOLD's control update)."""
        return any(hasattr(t, "end_round") for t in self.transforms)

    def end_round(
        self, start: Array, end: Array, lr_sum: Array, steps: int, state: Mapping[str, Array]
    ) -> tuple[Array, dict[str, Array]]:
        """(the model to report, the changed state arrays) once a round's `steps` steps took
        the parameters from `start` to `end` with learning rates summing to `lr_sum`; each
        piece with an `end_round` acts in order."""
        new: dict[str, Array] = {}
        for transform in self.transforms:
            if hasattr(transform, "end_round"):
                end, out = transform.end_round(start, end, lr_sum, steps, {**state, **new})
                new |= out
        return end, new


#: plain SGD, the direction is the gradient
SGD = LocalOptimizer()


def sgd(
    momentum: float = 0.0,
    *,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    prox_mu: float = 0.0,
) -> LocalOptimizer:
    """torch.optim.SGD's rule (no dampening) on the local objective plus FedProx's proximal
    term, as pieces; a setting of 0 adds no piece."""
    terms: tuple[Term, ...] = (WeightDecay(weight_decay),) if weight_decay else ()
    return LocalOptimizer(
        terms=terms + ((Proximal(prox_mu),) if prox_mu else ()),
        transforms=(Momentum(momentum, nesterov),) if momentum else (),
    )


@dataclass(frozen=True)
class LocalSGD:
    """The local steps' settings: the learning rate (when no schedule is given), the
    mini-batch size (0: full-batch gradients) and the optimizer's pieces."""

    lr: float
    batch_size: int = 32
    optimizer: LocalOptimizer = SGD
