"""The server side of A(tau, W, v) as an event-driven state machine, free of any framework.

A round is tau local steps on every worker followed by one sync. The coordinator holds the
auxiliary variables and the workers' latest reports, and releases worker i's next message as
soon as everything its column of W needs is known: for a dense W (J) that is every worker's
report, a barrier; for a sparse W only the neighbours'; for columns that read only auxiliary
nodes (EASGD, Overlap-Local-SGD, hierarchical, CoCoD-SGD) it is the auxiliary value of the
previous sync, which is already there, so the next round starts while the averaging of this
one is still being computed (the overlap of the papers, without any special case).

Message r (r >= 1) to worker i carries the payload of sync r-1 (none for r = 1) and asks for
tau local steps; the reply carries the model after them. After the last round, message R+1
carries the payload of sync R and asks for no steps: it leaves every worker in its final,
mixed state. A worker never has two messages in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedcoop.cooperative import ClientRule, CooperativeSpec
from fedcoop.errors import ConfigError


@dataclass(frozen=True)
class Payload:
    """What worker `worker` needs to apply sync `sync` to its own model.

    new x_i = self_weight * x_i + mix (client rule MIX), or for CoCoD-SGD the stale average
    in `mix` (client rule CORRECTION). ``mix`` is None when the column has no other entries.
    """

    worker: int
    sync: int
    self_weight: float
    mix: np.ndarray | None


@dataclass(frozen=True)
class Dispatch:
    """One message the server may send now: start `round` on `worker`."""

    worker: int
    round: int
    local_steps: int
    payload: Payload | None

    @property
    def final(self) -> bool:
        """True for the message after the last round, which only applies the last sync."""
        return self.local_steps == 0


@dataclass
class RoundSummary:
    """What the server knows once every worker has reported a round."""

    round: int
    #: the workers' average after this round's sync (for Remark-1 rules: before the pending
    #: gradient step, which only the workers hold)
    average: np.ndarray
    aux: np.ndarray
    #: (1/m) sum_i ||x_i - mean x||^2 over the reported (pre-sync) models
    consensus_distance: float


@dataclass
class Coordinator:
    """Server state of one run of `spec` over `num_rounds` rounds from the model x0."""

    spec: CooperativeSpec
    x0: np.ndarray
    num_rounds: int
    _next_round: list[int] = field(init=False)
    _in_flight: set[int] = field(init=False, default_factory=set)
    _reports: dict[int, dict[int, np.ndarray]] = field(init=False, default_factory=dict)
    _aux: dict[int, np.ndarray] = field(init=False, default_factory=dict)
    _velocity: np.ndarray = field(init=False)
    _summaries: list[RoundSummary] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.num_rounds < 1:
            raise ConfigError("num-rounds", self.num_rounds, "must be >= 1")
        m, v = self.spec.num_workers, self.spec.num_aux
        self.x0 = np.asarray(self.x0)
        self._next_round = [1] * m
        self._aux[0] = np.repeat(self.x0[None, :], v, axis=0)
        self._velocity = np.zeros_like(self._aux[0])

    @property
    def done(self) -> bool:
        """Every worker has answered its final message."""
        return all(r > self.num_rounds + 1 for r in self._next_round)

    def take_summaries(self) -> list[RoundSummary]:
        """The summaries of rounds completed since the last call, in order (then dropped, so
        a long run does not keep a model per round)."""
        out, self._summaries = self._summaries, []
        return out

    @property
    def aux(self) -> np.ndarray:
        """The auxiliary variables after the latest completed sync (v x d)."""
        return self._aux[max(self._aux)]

    def next_round(self, worker: int) -> int:
        """The round the next message to `worker` starts (num_rounds + 1: the final sync)."""
        return self._next_round[worker]

    def describe(self) -> str:
        """Where each worker stands, for error messages."""
        return f"next round per worker {self._next_round}, syncs known {sorted(self._aux)}"

    def ready(self) -> list[Dispatch]:
        """Messages that can be sent now; each is marked in flight."""
        out = []
        for i, r in enumerate(self._next_round):
            if i in self._in_flight or r > self.num_rounds + 1:
                continue
            payload = None if r == 1 else self._payload(i, r - 1)
            if r > 1 and payload is None:
                continue
            steps = self.spec.tau if r <= self.num_rounds else 0
            self._in_flight.add(i)
            out.append(Dispatch(worker=i, round=r, local_steps=steps, payload=payload))
        return out

    def record(self, worker: int, round_: int, model: np.ndarray) -> None:
        """Take worker's model after its tau steps of `round_` (or its final model)."""
        if not 0 <= worker < len(self._next_round):
            # A negative index would otherwise read another worker's round.
            raise ConfigError(
                f"reply from worker {worker}", f"round {round_}", f"no worker {worker} in this run"
            )
        expected = self._next_round[worker]
        if worker not in self._in_flight:
            # A duplicate or unsolicited reply: "round 2, expected round 2" would not say why.
            raise ConfigError(
                f"reply from worker {worker}",
                f"round {round_}",
                f"no message is in flight to worker {worker} (its next one starts round "
                f"{expected})",
            )
        if round_ != expected:
            raise ConfigError(
                f"reply from worker {worker}", f"round {round_}", f"expected round {expected}"
            )
        if model.shape != self.x0.shape or not np.all(np.isfinite(model)):
            raise ConfigError(
                f"model from worker {worker} in round {round_}",
                f"shape {model.shape}" if model.shape != self.x0.shape else "NaN/Inf values",
                f"must be a finite vector of shape {self.x0.shape}",
            )
        self._in_flight.discard(worker)
        self._next_round[worker] = round_ + 1
        if round_ > self.num_rounds:
            return
        self._reports.setdefault(round_, {})[worker] = np.array(model, copy=True)
        if len(self._reports[round_]) == self.spec.num_workers:
            self._complete(round_)
        self._forget()

    def _complete(self, round_: int) -> None:
        """All reports of `round_` are in: update the auxiliary nodes and summarise."""
        spec, m = self.spec, self.spec.num_workers
        reports = np.stack([self._reports[round_][i] for i in range(m)])
        prev = self._aux[round_ - 1]
        stacked = np.concatenate([reports, prev]) if spec.num_aux else reports
        if spec.num_aux:
            mixed = spec.w[:, m:].T @ stacked
            self._velocity = spec.anchor_momentum * self._velocity + (mixed - prev)
            # Kept in the model's dtype: a float32 model must not travel as float64.
            self._aux[round_] = (prev + self._velocity).astype(self.x0.dtype, copy=False)
        else:
            self._aux[round_] = prev
        if spec.client_rule is ClientRule.CORRECTION:
            average = reports.mean(axis=0)
        else:
            average = (spec.w[:, :m].T @ stacked).mean(axis=0)
        spread = reports - reports.mean(axis=0)
        self._summaries.append(
            RoundSummary(
                round=round_,
                average=average,
                aux=self._aux[round_],
                consensus_distance=float(np.mean(np.sum(spread * spread, axis=1))),
            )
        )

    def _payload(self, worker: int, sync: int) -> Payload | None:
        """Worker's part of sync `sync`, or None while something it needs is missing."""
        spec, m = self.spec, self.spec.num_workers
        reports = self._reports.get(sync, {})
        mix: np.ndarray | None = None
        for j, weight in spec.incoming(worker).items():
            if j < m:
                source = reports.get(j)
            else:
                aux = self._aux.get(sync - 1)
                source = None if aux is None else aux[j - m]
            if source is None:
                return None
            mix = weight * source if mix is None else mix + weight * source
        if mix is not None:
            mix = mix.astype(self.x0.dtype, copy=False)
        return Payload(worker=worker, sync=sync, self_weight=spec.self_weight(worker), mix=mix)

    def _forget(self) -> None:
        """Drop reports and auxiliary values that no future payload can read."""
        oldest = min(self._next_round) - 1
        for r in [r for r in self._reports if r < oldest and r in self._aux]:
            del self._reports[r]
        for c in [c for c in self._aux if c < oldest - 1 and c < max(self._aux)]:
            del self._aux[c]
