"""The Cooperative SGD rule A(tau, W, v) and its reference implementation.

`CooperativeSpec` is the whole definition of an algorithm as the papers write it: tau local
steps, a mixing matrix W over m workers and v auxiliary nodes, and which of the two update
rules it follows. Everything that runs (the server coordinator, the Flower strategy and the
client) reads its weights from here, and `reference_trajectory` is the dense matrix form of
the rule that the tests hold the distributed implementation to.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from fedcoop import mixing, participation
from fedcoop.errors import ConfigError
from fedcoop.optimizers import SGD, LocalOptimizer
from fedcoop.round_schedule import MatrixSchedule, Settled, TauSchedule


class UpdateRule(StrEnum):
    """Where the mixing sits relative to the tau-th gradient step."""

    #: X_{k+1} = (X_k - eta G_k) W_k, Cooperative SGD eq. (10): mix the models after the step.
    MIX_AFTER_STEP = "mix-after-step"
    #: X_{k+1} = X_k W_k - eta G_k, Remark 1 (EASGD eq. 4-5, D-PSGD eq. 6): mix the models from
    #: before the step, then add the step's gradient, which was taken at the unmixed model.
    MIX_BEFORE_STEP = "mix-before-step"


class ClientRule(StrEnum):
    """What a worker does with the payload the server sends for a sync."""

    #: x_i <- w_ii x_i + sum_{j != i} w_ji x_j: the column of W, own part added locally.
    MIX = "mix"
    #: CoCoD-SGD: x_i <- mean(snapshot) + (x_i - snapshot_i); snapshot_i <- x_i.
    CORRECTION = "correction"


GradientOracle = Callable[[int, np.ndarray, int], np.ndarray]
"""grad(worker, x, step) -> the stochastic gradient of worker `worker` at x on step `step`."""


@dataclass(frozen=True)
class CooperativeSpec:
    """A(tau, W, v) plus the details the papers fix per algorithm.

    ``w`` is (m+v) x (m+v) with columns [workers..., auxiliary...]; column i holds the weights
    of node i's new model (X W). ``anchor_momentum`` is the overlap paper's beta (eq. 7-8),
    applied to every auxiliary node: v <- beta v + (mixed z - z); z <- z + v.
    """

    tau: int
    w: np.ndarray
    num_aux: int = 0
    rule: UpdateRule = UpdateRule.MIX_AFTER_STEP
    client_rule: ClientRule = ClientRule.MIX
    anchor_momentum: float = 0.0
    symmetric: bool = True
    nonnegative: bool = True
    check_spectrum: bool = True
    #: how a round's sync re-weights W when some workers did not answer (fedcoop.participation)
    reweight: participation.Reweight = participation.renormalize
    #: W_r per round (None: W every round); `w` is then E[W_r] (fedcoop.round_schedule)
    w_schedule: MatrixSchedule | None = None
    #: tau_r per round (None: tau every round)
    tau_schedule: TauSchedule | None = None
    #: SCAFFOLD: the server keeps a control variate c, sends it with every message and
    #: adds (1/m) sum of the survivors' reported changes of c_i at each sync
    control_variates: bool = False
    #: each worker's local steps per round (round-time budgets, fedcoop.devices; None:
    #: every worker runs tau_r)
    worker_taus: tuple[int, ...] | None = None

    def steps_of(self, worker: int, round_: int, tau: int) -> int:
        """The local steps `worker` runs in round `round_` whose nominal tau is `tau`."""
        return tau if self.worker_taus is None else self.worker_taus[worker]

    @property
    def num_workers(self) -> int:
        """m, the number of columns of W that train."""
        return self.w.shape[0] - self.num_aux

    def validate(self, num_clients: int | None = None) -> CooperativeSpec:
        """Refuse a spec that cannot run, before any training; returns self for chaining."""
        mixing.valid_tau(self.tau)
        if not isinstance(self.num_aux, int) or self.num_aux < 0:
            raise ConfigError("num-aux", self.num_aux, "must be an integer >= 0")
        if not 0.0 <= self.anchor_momentum < 1.0:
            raise ConfigError("anchor-momentum", self.anchor_momentum, "must be in [0, 1)")
        w = np.asarray(self.w)
        if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] <= self.num_aux:
            raise ConfigError(
                "W",
                f"shape {w.shape}",
                f"must be square with more than num-aux={self.num_aux} rows",
            )
        m = w.shape[0] - self.num_aux
        if num_clients is not None and m != num_clients:
            raise ConfigError(
                "num-clients",
                num_clients,
                f"must equal the {m} worker columns of W (W is {w.shape[0]}x{w.shape[0]} "
                f"with num-aux={self.num_aux})",
            )
        if self.w_schedule is not None and (self.num_aux or self.w_schedule.num_workers != m):
            raise ConfigError(
                "topology-schedule",
                f"{self.w_schedule.num_workers} workers, num-aux={self.num_aux}",
                f"a schedule of W_r over the {m} workers and no auxiliary node",
            )
        if self.check_spectrum:
            mixing.validate(
                w,
                num_workers=m,
                num_aux=self.num_aux,
                symmetric=self.symmetric,
                nonnegative=self.nonnegative,
            )
        else:
            _validate_column_stochastic(w)
        return self

    def w_at(self, round_: int) -> np.ndarray:
        """W_r, the matrix the sync of round `round_` mixes with."""
        if self.w_schedule is None:
            return self.w
        w = self.w_schedule.matrix(round_)
        if w.shape != self.w.shape:
            raise ConfigError(f"W of round {round_}", f"shape {w.shape}", f"{self.w.shape}")
        return w

    def tau_at(self, round_: int, history: Sequence[Settled] = ()) -> int:
        """tau_r, the local steps of round `round_`, given the settled rounds before r - 1
        (fedcoop.round_schedule)."""
        if self.tau_schedule is None:
            return self.tau
        tau = self.tau_schedule.tau(round_, history)
        mixing.valid_tau(tau)
        return tau

    def rounds_of(self, num_steps: int) -> tuple[list[int], set[int]]:
        """For steps 1 .. num_steps: the round of each, and the steps that end a round (the
        matrix rule's W_k != I), for a tau schedule that reads no history."""
        rounds: list[int] = []
        ends: set[int] = set()
        while len(rounds) < num_steps:
            rounds += [len(ends) + 1] * self.tau_at(len(ends) + 1)
            ends.add(len(rounds))
        return rounds[:num_steps], ends

    def incoming(self, node: int) -> dict[int, float]:
        """The other nodes j with w_{j,node} != 0: whose models node's new model needs."""
        col = self.w[:, node]
        return {j: float(col[j]) for j in np.flatnonzero(col) if j != node}

    def self_weight(self, node: int) -> float:
        """w_{node,node}: the part of its own model a node keeps."""
        return float(self.w[node, node])


def _validate_column_stochastic(w: np.ndarray) -> None:
    """The one property every rule needs: each new model is a weighted average."""
    if not np.all(np.isfinite(w)):
        raise ConfigError("W", "a matrix with NaN or Inf", "all entries must be finite")
    sums = w.sum(axis=0)
    bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-9)
    if bad.size:
        raise ConfigError(f"W column {bad[0]}", f"sum {sums[bad[0]]:.6g}", "columns must sum to 1")


def reference_trajectory(
    spec: CooperativeSpec,
    x0: np.ndarray,
    grad: GradientOracle,
    eta: float,
    num_steps: int,
    *,
    optimizer: LocalOptimizer = SGD,
    participants: Callable[[int], Collection[int]] | None = None,
) -> np.ndarray:
    """Run the dense matrix rule for `num_steps` steps from all nodes at x0.

    Returns an array of shape (num_steps + 1, d, m + v): X_1 ... X_{K+1}, where step k
    (counted from 1) mixes with W when k mod tau == 0 and with I otherwise (eq. 7); with
    schedules, the last step of round r mixes with W_r and rounds take tau_r steps. G_k holds
    the workers' local directions: their gradients through `optimizer` (fedcoop.optimizers:
    weight decay, heavy-ball or Nesterov momentum as the overlap paper's workers use, ...);
    the aux nodes carry the spec's anchor momentum. CoCoD-SGD (the correction rule) is not a
    matrix rule and has its own literal reference, with the same output layout.

    With `participants`, round r (steps (r-1) tau + 1 ... r tau) is trained only by the
    workers participants(r) names (sampled and answering): the others take no step and
    keep their optimizer state, and the round's sync uses `participation.round_matrix` (the
    literal CoCoD-SGD reference has every worker in every round).
    """
    m, v = spec.num_workers, spec.num_aux
    round_of, ends = spec.rounds_of(num_steps)
    local = _LocalDirections(grad, m, optimizer, ends)
    if spec.client_rule is ClientRule.CORRECTION:
        return _cocod_reference(spec, x0, local, eta, num_steps)
    x = np.repeat(np.asarray(x0, dtype=np.float64)[:, None], m + v, axis=1)
    velocity = np.zeros((x.shape[0], v))
    out = [x.copy()]
    for k in range(1, num_steps + 1):
        r = round_of[k - 1]
        active = frozenset(participants(r) if participants else range(m))
        g = np.zeros_like(x)
        g[:, :m] = local(x[:, :m], k, active)
        if k not in ends:
            x = x - eta * g
        else:
            w = participation.round_matrix(spec.w_at(r), m, active, spec.reweight)
            mixed = (x - eta * g) @ w if spec.rule is UpdateRule.MIX_AFTER_STEP else x @ w
            if v:
                velocity = spec.anchor_momentum * velocity + (mixed[:, m:] - x[:, m:])
                mixed[:, m:] = x[:, m:] + velocity
            x = mixed if spec.rule is UpdateRule.MIX_AFTER_STEP else mixed - eta * g
        out.append(x.copy())
    return np.stack(out)


class _LocalDirections:
    """The workers' local update directions: each worker's gradient through the declared
    optimizer, worker by worker (the batched rule runs the same declaration on rows)."""

    def __init__(
        self, grad: GradientOracle, m: int, optimizer: LocalOptimizer, ends: Collection[int]
    ) -> None:
        self.grad, self.m, self.optimizer, self.ends = grad, m, optimizer, ends
        self.state: list[dict[str, np.ndarray]] = [{} for _ in range(m)]
        #: the workers' models at the start of the round: the anchor of the optimizer's terms
        self.anchor = np.empty(0)

    def __call__(self, x: np.ndarray, k: int, active: frozenset[int] | None = None) -> np.ndarray:
        """Step k's directions (d x m); workers outside `active` take no step and keep their
        optimizer state."""
        if k == 1 or k - 1 in self.ends:
            self.anchor = x.copy()
        out = np.zeros_like(x)
        for i in range(self.m):
            if active is None or i in active:
                out[:, i] = self._direction(i, x[:, i], k)
        return out

    def _direction(self, i: int, x: np.ndarray, k: int) -> np.ndarray:
        optimizer = self.optimizer
        g = optimizer.gradient(self.grad(i, x, k), x, self.anchor[:, i])
        state = {name: self.state[i].get(name, np.zeros_like(x)) for name in optimizer.state_names}
        direction, self.state[i] = optimizer.direction(g, state)
        return direction


def _cocod_reference(
    spec: CooperativeSpec, x0: np.ndarray, local: _LocalDirections, eta: float, num_steps: int
) -> np.ndarray:
    """CoCoD-SGD written literally: every tau steps x_i <- mean(s) + x_i - s_i and s_i <- x_i.

    The snapshots s are the workers' models at the previous sync; the auxiliary column of the
    output holds mean(s).
    """
    m = spec.num_workers
    x = np.repeat(np.asarray(x0, dtype=np.float64)[:, None], m, axis=1)
    s = x.copy()
    out = [np.concatenate([x, s.mean(axis=1, keepdims=True)], axis=1)]
    _, ends = spec.rounds_of(num_steps)
    for k in range(1, num_steps + 1):
        x = x - eta * local(x, k)
        if k in ends:
            x = s.mean(axis=1, keepdims=True) + x - s
            s = x.copy()
        out.append(np.concatenate([x, s.mean(axis=1, keepdims=True)], axis=1))
    return np.stack(out)
