"""Rounds whose tau and W change: the schedules a `CooperativeSpec` may carry.

Cooperative SGD with W_k and tau that change from round to round: round r runs tau_r local
steps and its sync mixes with W_r (the rule X_{k+1} = (X_k - eta G_k) W_k with W_k = W_r on
the last step of round r and I otherwise). Two kinds of schedule:

- A matrix schedule gives W_r (m x m, workers only) as a pure function of the round: its
  seeded draws are the same in every process, engine and resume (MATCHA in fedcoop.matcha,
  random gossip and a user's sequence of matrices in fedcoop.gossip). The spec's `w` is then
  E[W_r], the matrix that analysis and validation read.
- A tau schedule gives tau_r from the history of the run: the start (round 0, the model x0)
  and the settled rounds 1 .. r - 2 (`LAG` = 2). Round r - 2 is the latest round settled
  whenever round r can start, also under Overlap-Local-SGD, where round r is released before
  round r - 1 has settled, so every engine, and a resumed run, decides the same tau_r
  (AdaComm in fedcoop.adacomm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedcoop.errors import ConfigError

#: tau_r reads the history of rounds up to r - LAG
LAG = 2


@dataclass(frozen=True)
class Settled:
    """What a tau schedule may read of one settled round (round 0: the start)."""

    #: the loss of the workers' average after the round's sync (the server's evaluation;
    #: NaN without one)
    loss: float
    #: the virtual time at which the round's sync completed (fedcoop.clock)
    time: float
    #: local steps per worker up to and including this round (the sum of the taus)
    steps: int


class MatrixSchedule(Protocol):
    """W_r per round over the workers (no auxiliary nodes)."""

    num_workers: int

    def matrix(self, round_: int) -> np.ndarray:
        """W_r, rounds counted from 1."""
        ...

    def expected(self) -> np.ndarray:
        """E[W_r], the spec's nominal W."""
        ...


class TauSchedule(Protocol):
    """tau_r per round, from the history of the rounds settled before r - 1."""

    def tau(self, round_: int, history: Sequence[Settled]) -> int:
        """tau_r; `history` holds exactly rounds 0 .. max(0, round_ - LAG)."""
        ...

    def describe(self) -> str:
        """The schedule as results and logs name it."""
        ...


@dataclass(frozen=True)
class TauSequence:
    """Explicit taus: round r takes taus[r - 1], the last one repeating."""

    taus: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.taus or any(
            isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1 for t in self.taus
        ):
            raise ConfigError("tau-schedule", list(self.taus), "a list of integers >= 1")

    def tau(self, round_: int, history: Sequence[Settled]) -> int:
        """taus[r - 1], or the last one past the list's end."""
        return int(self.taus[min(round_, len(self.taus)) - 1])

    def describe(self) -> str:
        """The list as `tau-schedule` spells it."""
        return ",".join(str(t) for t in self.taus)


def parse_taus(text: str) -> TauSequence:
    """A `tau-schedule` of comma-separated integers, e.g. "8,8,4,2,1"."""
    try:
        taus = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            "tau-schedule", text, 'fixed, adacomm or comma-separated integers >= 1, e.g. "8,4,2"'
        ) from None
    return TauSequence(taus)
