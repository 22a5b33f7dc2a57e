"""The server side of A(tau, W, v) as an event-driven state machine, free of any framework.

A round is tau local steps on every sampled worker followed by one sync. The coordinator
holds the auxiliary variables and the workers' reports, and releases worker i's next message
as soon as everything its column of W needs is known. A column that reads other workers
waits until the round is settled (every sampled worker reported, failed, was late or was
rejected), which for J is the barrier it has to be. A column that reads only auxiliary nodes
(EASGD, Overlap-Local-SGD, hierarchical, CoCoD-SGD) needs the auxiliary value of the previous
sync, which is already there, so the worker's next round starts while the averaging of this
one is still being computed (the overlap of the papers, without any special case).

Message r (r >= 1) to worker i carries the payload of the last sync before round r that
concerns i (none before its first round) and asks for tau local steps; the reply carries the
model after them. After the last round, message R+1 carries the payload of sync R and asks
for no steps: it leaves every worker in its final, mixed state. A worker never has two
messages in flight. Workers that miss a round follow `fedcoop.participation`: the sync uses
W re-weighted over the survivors, and a worker that missed it adopts the survivors' mix.

With ``eager`` (the `eager-reply` config key), a worker answers each message at once with the
model of its previous round and runs the new round's local steps after answering, so that
its link is busy while it computes. Round r+1 is then released while round r is still
running (`ahead`): its payload reads only the worker itself and the auxiliary values of the
sync before, and the message that starts it is the one that collects round r. If round r
does not come back usably, round r+1 is taken back and sent again, adopting, once round r
has settled without the worker.

The module is one state machine over shared tables (who is busy, late or ahead, the reports,
payloads and auxiliary values of each open round), which is why it stays one file of some
700 lines: splitting it would hand those tables across modules. The payloads waiting for
workers' next messages are held by `fedcoop.pending`, W_S of a round by
`fedcoop.participation.RoundMix`, so that a round costs its cohort and not m.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcoop import participation
from fedcoop.errors import ConfigError
from fedcoop.pending import Payload, PendingPayloads
from fedcoop.round_schedule import LAG, Settled
from fedcoop.spec import ClientRule, CooperativeSpec


class QuorumLost(RuntimeError):
    """Too few workers answered a round to continue; the message lists why each did not."""


def check_eager(spec: CooperativeSpec, participation: float, norm_bound: float) -> None:
    """Eager replies need every payload computable before the worker's own report is in: a
    column that reads only the worker and auxiliary nodes, every worker in every round, and
    no check that compares the round's models first."""
    m = spec.num_workers
    readers = [i for i in range(m) if any(j < m for j in spec.incoming(i))]
    if readers:
        raise ConfigError(
            "eager-reply",
            True,
            "needs workers whose column of W reads only themselves and auxiliary nodes "
            f"(overlap, easgd, eamsgd, hierarchical, cocod); workers {readers} read other "
            "workers",
        )
    if participation < 1:
        raise ConfigError("eager-reply", True, "needs participation = 1")
    if norm_bound:
        raise ConfigError("eager-reply", True, "needs update-norm-bound = 0 (off)")


@dataclass(frozen=True)
class Dispatch:
    """One message the server may send now: start `round` on `worker`."""

    worker: int
    round: int
    local_steps: int
    payload: Payload | None
    #: the worker holds no model yet and nothing to adopt: the message carries x0
    init: bool = False
    #: SCAFFOLD: the server's control variate c the message carries (None: zeros, no
    #: sync has changed it yet)
    control: np.ndarray | None = None

    @property
    def final(self) -> bool:
        """True for the message after the last round, which only applies the last sync."""
        return self.local_steps == 0


@dataclass
class RoundSummary:
    """What the server knows once a round is settled."""

    round: int
    #: the round's local steps per worker (tau_r)
    tau: int
    #: the surviving workers' average after this round's sync (for Remark-1 rules: before
    #: the pending gradient step, which only the workers hold)
    average: np.ndarray
    aux: np.ndarray
    #: (1/|S|) sum_{i in S} ||x_i - mean x||^2 over the survivors' reported (pre-sync) models
    consensus_distance: float
    sampled: list[int]
    survivors: list[int]
    #: worker -> why it is not among the survivors
    missing: dict[int, str]
    rejected: list[int]
    #: parts the survivors mix in (> 1: the surviving graph split this round)
    components: int = 1
    #: workers the coordinator itself left out when the round settled (no reply told of
    #: it): worker -> "busy" (still running a round it was late for) or "rejected" (norm)
    settled_out: dict[int, str] = field(default_factory=dict)


def consensus_distance(models: np.ndarray, mean: np.ndarray | None = None) -> float:
    """The mean squared distance of the models (rows) a round's workers reported from
    their mean, before the sync: how far local steps drove them apart."""
    spread = models - (models.mean(axis=0) if mean is None else mean)
    return float(np.mean(np.sum(spread * spread, axis=1)))


@dataclass
class Coordinator:
    """Server state of one run of `spec` over `num_rounds` rounds from the model x0.

    ``participation`` samples that share of the workers per round (seeded by ``seed``);
    ``quorum`` is the share of a round's sampled workers that must answer; ``norm_bound``
    (0 = off) rejects models farther than that many times the round's median distance from
    the round's median model.
    """

    spec: CooperativeSpec
    x0: np.ndarray
    num_rounds: int
    participation: float = 1.0
    seed: int = 0
    quorum: float = 0.0
    norm_bound: float = 0.0
    #: keep the state of every this many settled rounds for `take_cut` (0 = never)
    checkpoint_every: int = 0
    #: release round r+1 while the worker still runs round r (eager replies)
    eager: bool = False
    #: the workers available at a virtual time (device tables' windows; None: all, always):
    #: round r samples among those available when round r - LAG settled, a time that every
    #: engine knows by then (fedcoop.devices)
    available: Callable[[float], frozenset[int]] | None = None
    _last: list[int] = field(init=False)
    _busy: dict[int, int] = field(init=False, default_factory=dict)
    #: eager: worker -> the round released after the one in `_busy`, whose report is awaited
    _ahead: dict[int, int] = field(init=False, default_factory=dict)
    _late: dict[int, int] = field(init=False, default_factory=dict)
    _trained: set[int] = field(init=False, default_factory=set)
    _reports: dict[int, dict[int, np.ndarray]] = field(init=False, default_factory=dict)
    _missing: dict[int, dict[int, str]] = field(init=False, default_factory=dict)
    _rejected: dict[int, set[int]] = field(init=False, default_factory=dict)
    #: payloads sent before their round settled, by (worker, sync)
    _early: dict[tuple[int, int], Payload] = field(init=False, default_factory=dict)
    _pending: PendingPayloads = field(init=False)
    _settled: int = field(init=False, default=0)
    _aux: dict[int, np.ndarray] = field(init=False, default_factory=dict)
    _velocity: np.ndarray = field(init=False)
    _summaries: list[RoundSummary] = field(init=False, default_factory=list)
    _sampled: dict[int, frozenset[int]] = field(init=False, default_factory=dict)
    _cut: dict[str, Any] | None = field(init=False, default=None)
    _settled_out: dict[int, dict[int, str]] = field(init=False, default_factory=dict)
    #: the settled rounds as a tau schedule reads them (`observe`), and the decided taus
    _history: list[Settled] = field(init=False, default_factory=list)
    _taus: dict[int, int] = field(init=False, default_factory=dict)
    #: SCAFFOLD: the control variate c, and the changes of c_i each round's reports carry
    _control: np.ndarray | None = field(init=False, default=None)
    _deltas: dict[int, dict[int, np.ndarray]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_rounds < 1:
            raise ConfigError("num-rounds", self.num_rounds, "must be >= 1")
        m, v = self.spec.num_workers, self.spec.num_aux
        self.x0 = np.asarray(self.x0)
        self._last = [0] * m
        self._pending = PendingPayloads(m)
        self._aux[0] = np.repeat(self.x0[None, :], v, axis=0)
        self._velocity = np.zeros_like(self._aux[0])
        if self.eager:
            check_eager(self.spec, self.participation, self.norm_bound)

    # -- what the strategy asks ----------------------------------------------------------
    @property
    def done(self) -> bool:
        """The final message has been answered (or given up on) by every worker."""
        return self._settled > self.num_rounds

    @property
    def aux(self) -> np.ndarray:
        """The auxiliary variables after the latest settled sync (v x d)."""
        return self._aux[max(self._aux)]

    def sampled(self, round_: int) -> frozenset[int]:
        """The workers that train round `round_`; everyone gets the final message."""
        if round_ not in self._sampled:
            m = self.spec.num_workers
            if round_ > self.num_rounds:
                self._sampled[round_] = frozenset(range(m))
            else:
                pool = None if self.available is None else self._available_for(round_)
                self._sampled[round_] = participation.sample(
                    self.seed, round_, m, self.participation, pool
                )
        return self._sampled[round_]

    def _available_for(self, round_: int) -> frozenset[int]:
        """The workers round `round_` may sample: available when round r - LAG settled."""
        assert self.available is not None
        settled = round_ - LAG
        if settled >= len(self._history):
            raise RuntimeError(f"round {round_} sampled before round {settled} was observed")
        time = self._history[settled].time if settled > 0 else 0.0
        pool = self.available(time)
        if not pool:
            raise QuorumLost(
                f"round {round_}: no worker is available at virtual time {time:.3g} s "
                "(the device table's available windows)"
            )
        return pool

    def tau_of(self, round_: int) -> int:
        """tau_r of round `round_`, decided once, from rounds 0 .. r - 2 as observed."""
        if round_ not in self._taus:
            history = self._history[: max(0, round_ - LAG) + 1]
            self._taus[round_] = self.spec.tau_at(round_, history)
        return self._taus[round_]

    def observe(self, round_: int, loss: float, time: float) -> None:
        """What the strategy measured of settled round `round_` (round 0: the start, x0),
        the loss of the workers' average and the virtual end time, for the tau schedule;
        called for every round from 0, in order."""
        if round_ != len(self._history) or round_ > self._settled:
            raise ValueError(
                f"observe(round {round_}): expected round {len(self._history)}, "
                f"settled up to {self._settled}"
            )
        steps = self._history[-1].steps + self.tau_of(round_) if round_ else 0
        self._history.append(Settled(float(loss), float(time), steps))

    def take_summaries(self) -> list[RoundSummary]:
        """The summaries of rounds settled since the last call, in order (then dropped, so
        a long run does not keep a model per round)."""
        out, self._summaries = self._summaries, []
        return out

    def next_round(self, worker: int) -> int:
        """The round worker is running, or the one its next message starts (num_rounds + 1:
        the final sync; num_rounds + 2: nothing left)."""
        if worker in self._busy:
            return self._busy[worker]
        upcoming = self._next_round(worker)
        return self.num_rounds + 2 if upcoming is None else upcoming

    def idle_since(self, worker: int, round_: int) -> bool:
        """Worker has had no message since the one for `round_` and is not running it."""
        return (
            worker not in self._busy and worker not in self._late and (self._last[worker] == round_)
        )

    def awaited(self, worker: int) -> Dispatch | None:
        """The dispatch (without its payload) whose report the coordinator awaits from
        worker, None when none: the one notion of a worker's round in flight, which the
        transport's eager exchanges read rather than keep their own."""
        r = self._busy.get(worker)
        if r is None:
            return None
        return Dispatch(worker, r, self._steps(worker, r), None)

    @property
    def awaited_workers(self) -> list[int]:
        """The workers whose report is awaited, in order."""
        return sorted(self._busy)

    def describe(self) -> str:
        """Where each worker stands, for error messages."""
        return (
            f"last round per worker {self._last}, in flight {self._busy}, "
            f"started ahead {self._ahead}, late {self._late}, "
            f"rounds settled up to {self._settled}"
        )

    def ready(self) -> list[Dispatch]:
        """Messages that can be sent now; each is marked in flight."""
        out = []
        for i in self._candidates():
            if i in self._late or i in self._ahead:
                continue
            if i not in self._busy:
                r = self._next_round(i)
            elif self.eager and self._busy[i] <= self.num_rounds:
                r = self._busy[i] + 1  # every worker trains every round (checked)
            else:
                continue
            if r is None:
                continue
            known, payload = self._payload_for(i, r)
            if not known:
                continue
            if i in self._busy:
                self._ahead[i] = r
            else:
                self._busy[i] = r
            self._last[i] = r
            steps = self._steps(i, r)
            init = i not in self._trained and payload is None
            out.append(Dispatch(i, r, steps, payload, init=init, control=self._control))
        return out

    def _steps(self, worker: int, round_: int) -> int:
        """The local steps `worker` runs in `round_` (0: the final message)."""
        if round_ > self.num_rounds:
            return 0
        return self.spec.steps_of(worker, round_, self.tau_of(round_))

    def _candidates(self) -> list[int]:
        """The workers a message may be ready for: those sampled for the next two rounds
        (a payload is known at most one round past the last settled one) and those running
        a round (eager replies), so that a round's bookkeeping follows the cohort."""
        workers = set(self._busy)
        for r in (self._settled + 1, self._settled + 2):
            if r <= self.num_rounds + 1:
                workers |= self.sampled(r)
        return sorted(workers)

    # -- what the workers answer ---------------------------------------------------------
    def record(
        self,
        worker: int,
        round_: int,
        model: np.ndarray,
        control_delta: np.ndarray | None = None,
    ) -> str | None:
        """Take worker's model after its tau steps of `round_` (or its final model), and
        under SCAFFOLD the change of its control variate c_i in that round.

        Returns None if accepted, else why the model was rejected (it is then left out of
        the round, like a worker that failed, and told to reset at its next message).
        """
        self._check_in_flight(worker, round_)
        problem = self._problem(model)
        if problem is None and self.spec.control_variates and round_ <= self.num_rounds:
            problem = self._control_problem(control_delta)
        if problem is not None:
            self.reject(worker, round_, problem)
            return problem
        del self._busy[worker]
        if worker in self._ahead:
            self._busy[worker] = self._ahead.pop(worker)
        self._trained.add(worker)
        self._reports.setdefault(round_, {})[worker] = np.array(model, copy=True)
        if self.spec.control_variates and control_delta is not None:
            self._deltas.setdefault(round_, {})[worker] = np.array(control_delta, copy=True)
        self._settle()
        return None

    def reject(self, worker: int, round_: int, reason: str) -> None:
        """Worker's reply to `round_` is unusable: leave it out of the round, reset it."""
        self._check_in_flight(worker, round_)
        del self._busy[worker]
        self._take_back_ahead(worker, round_)
        self._trained.add(worker)
        self._rejected.setdefault(round_, set()).add(worker)
        self._missing.setdefault(round_, {})[worker] = f"rejected: {reason}"
        self._settle()

    def drop(self, worker: int, round_: int, reason: str, *, still_running: bool) -> None:
        """Worker did not answer `round_` usably (it failed, or the deadline passed).

        ``still_running``: its reply may still come (a deadline); it gets no new message
        until `release` says the late reply arrived, and it is left out of the rounds it
        misses meanwhile.
        """
        self._check_in_flight(worker, round_)
        del self._busy[worker]
        self._take_back_ahead(worker, round_)
        if still_running:
            self._late[worker] = round_
        self._missing.setdefault(round_, {})[worker] = reason
        self._settle()

    def release(self, worker: int) -> int:
        """The late reply of `worker` arrived (and is discarded); returns its round."""
        if worker not in self._late:
            raise ConfigError(f"late reply from worker {worker}", "", "it was not late")
        round_ = self._late.pop(worker)
        self._settle()
        return round_

    # -- checkpoints ---------------------------------------------------------------------
    def take_cut(self) -> dict[str, Any] | None:
        """The server state as of the end of the latest checkpoint round settled since the
        last call (plain data for `fedcoop.checkpoint`), or None."""
        cut, self._cut = self._cut, None
        return cut

    def _export(self, round_: int) -> dict[str, Any]:
        """Everything needed to go on from the end of settled round `round_`: a worker
        already running round_ + 1 (overlap) is put back to before it, with the payload it
        was sent counted as not yet delivered."""
        pending = self._pending.as_dict()
        last = list(self._last)
        for (i, sync), payload in self._early.items():
            if sync == round_:
                pending[i], last[i] = payload, round_
        return {
            "settled": round_,
            "last": last,
            "trained": sorted(self._trained),
            "late": dict(self._late),
            "aux": self._aux[round_].copy(),
            "velocity": self._velocity.copy(),
            "pending": {i: dataclasses.asdict(p) for i, p in pending.items()},
            "control": self._control,
        }

    def restore(self, cut: dict[str, Any]) -> None:
        """Continue from a state `_export` made (a fresh coordinator of the same run)."""
        if self._settled or self._busy:
            raise RuntimeError("restore() needs a coordinator that has not started")
        self._settled = int(cut["settled"])
        self._last = [int(r) for r in cut["last"]]
        self._trained = set(cut["trained"])
        self._aux = {self._settled: np.asarray(cut["aux"])}
        self._velocity = np.asarray(cut["velocity"])
        control = cut.get("control")
        self._control = None if control is None else np.asarray(control)
        self._pending = PendingPayloads(self.spec.num_workers)
        for i, p in cut["pending"].items():
            self._pending.set(int(i), Payload(**p))

    # -- internals -----------------------------------------------------------------------
    def _take_back_ahead(self, worker: int, missed: int) -> None:
        """Eager: the round started ahead of `missed` assumed the worker's report of it; it
        is released again (adopting) once `missed` has settled without the worker."""
        if self._ahead.pop(worker, None) is not None:
            self._last[worker] = missed

    def _check_in_flight(self, worker: int, round_: int) -> None:
        if not 0 <= worker < self.spec.num_workers:
            # A negative index would otherwise read another worker's round.
            raise ConfigError(
                f"reply from worker {worker}", f"round {round_}", f"no worker {worker} in this run"
            )
        if worker not in self._busy:
            # A duplicate or unsolicited reply: "round 2, expected round 2" would not say why.
            raise ConfigError(
                f"reply from worker {worker}",
                f"round {round_}",
                f"no message is in flight to worker {worker} (its last round was "
                f"{self._last[worker]})",
            )
        if round_ != self._busy[worker]:
            raise ConfigError(
                f"reply from worker {worker}",
                f"round {round_}",
                f"expected round {self._busy[worker]}",
            )

    def _control_problem(self, delta: np.ndarray | None) -> str | None:
        """Why a SCAFFOLD report's change of c_i cannot be added to c, or None."""
        if delta is None:
            return "no change of its control variate (SCAFFOLD's c_i) in the reply"
        shape = None if self._control is None else self._control.shape
        if delta.ndim != 1 or (shape is not None and delta.shape != shape):
            return f"control variate change of shape {delta.shape}, not {shape or 'a vector'}"
        if not np.all(np.isfinite(delta)):
            return "control variate change with NaN or Inf"
        return None

    def _problem(self, model: np.ndarray) -> str | None:
        """Why a reported model cannot be used, or None."""
        if model.shape != self.x0.shape:
            return f"shape {model.shape}, expected {self.x0.shape}"
        if model.dtype != self.x0.dtype:
            return f"dtype {model.dtype}, expected {self.x0.dtype}"
        if not np.all(np.isfinite(model)):
            return "NaN or Inf values"
        return None

    def _next_round(self, worker: int) -> int | None:
        """The next round after its last one that `worker` is sampled for and not out of."""
        # a message is ready at most two rounds past the last settled one (`_payload_for`)
        last = min(self.num_rounds + 1, self._settled + 2)
        for r in range(max(self._last[worker], self._settled) + 1, last + 1):
            if worker in self.sampled(r) and worker not in self._missing.get(r, {}):
                return r
        return None

    def _payload_for(self, worker: int, round_: int) -> tuple[bool, Payload | None]:
        """(known, payload): the sync payload message `round_` to `worker` carries."""
        sync = round_ - 1
        if self._settled >= sync:
            return True, self._pending.pop(worker)
        # Early: the worker trained that very sync's round, its report stands, and its
        # column reads only itself and auxiliary values of the sync before (overlap).
        w = self.spec.w_at(sync)
        reported = worker in self._reports.get(sync, {}) or (
            self.eager and self._busy.get(worker) == sync
        )
        early = (
            self._last[worker] == sync
            and reported
            and not self.norm_bound
            and sync - 1 in self._aux
            and not self._reads_workers(w, worker)
        )
        if not early:
            return False, None
        weights = w[self.spec.num_workers :, worker]  # it reads only auxiliary nodes
        mix = weights @ self._aux[sync - 1] if weights.any() else None
        payload = self._survivor_payload(worker, sync, float(w[worker, worker]), mix)
        self._early[worker, sync] = payload
        return True, payload

    def _reads_workers(self, w: np.ndarray, worker: int) -> bool:
        """Whether worker's column of `w` reads other workers (its payload then waits for
        the round to settle)."""
        column = w[: self.spec.num_workers, worker]
        return bool(np.count_nonzero(column) - (column[worker] != 0))

    def _survivor_payload(
        self, worker: int, sync: int, self_weight: float, mix: np.ndarray | None
    ) -> Payload:
        """The payload of a worker whose report the sync used (or, early, will use)."""
        if mix is not None:
            mix = mix.astype(self.x0.dtype, copy=False)
        return Payload(worker, sync, self_weight, mix)

    def _adopt(
        self,
        mix: participation.RoundMix,
        sources: np.ndarray,
        mean: np.ndarray,
        sync: int,
    ) -> None:
        """The payloads of the workers that missed `sync`: each group's column of W_S read
        once over the present nodes' models `sources`. A group whose column reads no present
        node keeps what waited for it; a worker to reset (its update was rejected, or a reset
        waits for it) gets its own payload, the survivors' average `mean` when it has no
        source, as a rejected model must not be kept."""
        to_reset = self._rejected.get(sync, set()) | self._pending.resetting()
        for workers, column in mix.groups:
            resets = [i for i in to_reset if i in workers] if to_reset else []
            adopted = mean if column is None else column @ sources
            shared = Payload(-1, sync, 0.0, adopted.astype(self.x0.dtype, copy=False), adopt=True)
            for i in resets:
                self._pending.set(i, dataclasses.replace(shared, worker=i, reset=True))
            if column is not None:
                kept = np.setdiff1d(workers, resets) if resets else workers
                self._pending.set_group(kept, shared)

    def _survivor_mixes(
        self, mix: participation.RoundMix, sources: np.ndarray, round_: int
    ) -> dict[int, tuple[float, np.ndarray | None]]:
        """Each survivor's (w_ii, sum_{j != i} w_ji x_j) over the present nodes' models
        `sources` (the survivors', then the auxiliary values of the sync before), by its
        position in `mix.alive` (None: no other entries).

        When the survivors' columns are all equal (J, FedAvg's p 1^T), every survivor's new
        model is the same c^T X: one row product instead of |S| of them, sent as a payload
        that replaces the model (self weight 0), which is that sum with one rounding less.
        Otherwise one product over the rows some column reads (an anchor rule's: one row)."""
        columns = [k for k, i in enumerate(mix.alive) if (i, round_) not in self._early]
        if not columns:
            return {}
        block = mix.block
        if (
            self.spec.client_rule is ClientRule.MIX
            and len(columns) > 1
            and np.all(block[:, columns] == block[:, columns[:1]])
        ):
            total = (block[:, columns[0]] @ sources).astype(self.x0.dtype, copy=False)
            return {k: (0.0, total) for k in columns}
        off = block[:, columns]  # a copy: the diagonal is zeroed below
        off[columns, range(len(columns))] = 0.0
        rows = np.flatnonzero(off.any(axis=1))
        mixed = off[rows].T @ sources[rows]
        other = np.any(off != 0.0, axis=0)
        return {
            k: (float(block[k, k]), mixed[n] if other[n] else None) for n, k in enumerate(columns)
        }

    def _settle(self) -> None:
        """Settle every round, in order, whose sampled workers have all been heard of."""
        while not self.done:
            r = self._settled + 1
            heard = self._reports.get(r, {}).keys() | self._missing.get(r, {}).keys()
            unheard = self.sampled(r) - heard
            if not unheard <= self._late.keys():
                return
            # Only workers still busy with a round they were late for hold this one up:
            # leave them out (they may still have come back while the others trained).
            for i in unheard:
                self._missing.setdefault(r, {})[i] = f"still running round {self._late[i]}"
                self._settled_out.setdefault(r, {})[i] = "busy"
            if r <= self.num_rounds:
                self._sync(r)
            self._settled = r
            if self.checkpoint_every and r <= self.num_rounds and r % self.checkpoint_every == 0:
                self._cut = self._export(r)
            self._forget()

    def _sync(self, round_: int) -> None:
        """Round `round_` is settled: check quorum, mix, update the auxiliary nodes."""
        spec, m = self.spec, self.spec.num_workers
        reports = self._reports.get(round_, {})
        self._apply_norm_bound(round_, reports)
        sampled = self.sampled(round_)
        missing = self._missing.get(round_, {})
        needed = participation.quorum_size(self.quorum, len(sampled))
        if len(reports) < needed:
            reasons = "; ".join(f"worker {i}: {why}" for i, why in sorted(missing.items()))
            raise QuorumLost(
                f"round {round_}: {len(reports)} of {len(sampled)} sampled workers answered, "
                f"quorum needs {needed} ({reasons})"
            )
        survivors = frozenset(reports)
        if spec.control_variates:
            self._update_control(round_, sorted(reports))
        mix = participation.round_mix(spec.w_at(round_), m, survivors, spec.reweight)
        alive, block, k = mix.alive, mix.block, len(mix.alive)
        # Only the present nodes' rows of W_S are non-zero off the diagonal, so the sync
        # reads the cohort's models and never an m x d table.
        prev = self._aux[round_ - 1]
        # the survivors' models, then the auxiliary values: the rows that W_S's block mixes
        sources = np.empty((k + len(prev), self.x0.size))
        for n, i in enumerate(alive):
            sources[n] = reports[i]
        sources[k:] = prev
        models = sources[:k]
        if spec.num_aux:
            mixed = block[:, k:].T @ sources
            self._velocity = spec.anchor_momentum * self._velocity + (mixed - prev)
            # Kept in the model's dtype: a float32 model must not travel as float64.
            self._aux[round_] = (prev + self._velocity).astype(self.x0.dtype, copy=False)
        else:
            self._aux[round_] = prev
        for n, (self_weight, mixed_in) in self._survivor_mixes(mix, sources, round_).items():
            i = alive[n]
            self._pending.set(i, self._survivor_payload(i, round_, self_weight, mixed_in))
        for i, sync in [key for key in self._early if key[1] == round_ and key[0] not in survivors]:
            del self._early[i, sync]  # eager: its early payload assumed a report that did not come
        mean = models.mean(axis=0)
        self._adopt(mix, sources, mean, round_)
        if spec.client_rule is ClientRule.CORRECTION:
            average = mean
        else:
            average = block[:, :k].mean(axis=1) @ sources  # the mean of the survivors' columns
        self._summaries.append(
            RoundSummary(
                round=round_,
                tau=self.tau_of(round_),
                average=average,
                aux=self._aux[round_],
                consensus_distance=consensus_distance(models, mean),
                sampled=sorted(sampled),
                survivors=alive,
                missing=dict(sorted(missing.items())),
                rejected=sorted(self._rejected.get(round_, set())),
                # W itself was validated to mix; only a re-weighted one can split
                components=1 if k == m else participation.components(mix),
                settled_out=dict(sorted(self._settled_out.get(round_, {}).items())),
            )
        )

    def _update_control(self, round_: int, survivors: list[int]) -> None:
        """SCAFFOLD's server step on c: c <- c + (1/m) sum of the survivors' changes of c_i
        (Algorithm 1's (|S|/N) times their mean), so c stays the mean of every c_i."""
        deltas = self._deltas.get(round_, {})
        if not survivors:
            return
        total = np.sum([deltas[i] for i in survivors], axis=0)
        base = np.zeros_like(total) if self._control is None else self._control
        self._control = (base + total / self.spec.num_workers).astype(total.dtype, copy=False)

    def _apply_norm_bound(self, round_: int, reports: dict[int, np.ndarray]) -> None:
        """Reject models far from the round's median model (norm-bound defence)."""
        if not self.norm_bound or len(reports) < 3:
            return
        workers = sorted(reports)
        models = np.stack([reports[i] for i in workers])
        distance = np.linalg.norm(models - np.median(models, axis=0), axis=1)
        scale = float(np.median(distance))
        for i, d in zip(workers, distance, strict=True):
            if scale > 0 and d > self.norm_bound * scale:
                del reports[i]
                self._rejected.setdefault(round_, set()).add(i)
                self._settled_out.setdefault(round_, {})[i] = "rejected"
                self._missing.setdefault(round_, {})[i] = (
                    f"rejected: distance {d:.4g} from the median model exceeds "
                    f"update-norm-bound {self.norm_bound} x median distance {scale:.4g}"
                )

    def _forget(self) -> None:
        """Drop what no future payload can read: settled reports, old auxiliary values."""
        for key in [k for k in self._early if k[1] <= self._settled]:
            del self._early[key]
        tables = (
            self._reports,
            self._missing,
            self._rejected,
            self._sampled,
            self._settled_out,
            self._deltas,
        )
        for table in (*tables, self._taus):
            for r in [r for r in table if r <= self._settled]:
                del table[r]
        for c in [c for c in self._aux if c < self._settled - 1]:
            del self._aux[c]
