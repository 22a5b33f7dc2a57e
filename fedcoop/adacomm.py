"""AdaComm: the communication period tau adapted to the training loss, on the virtual clock.

Wang & Joshi, "Adaptive Communication Strategies to Achieve the Best Error-Runtime
Trade-off in Local-Update SGD" (SysML 2019, arXiv 1810.08313), section 4: start with
infrequent averaging (a large tau_0, fast progress per second) and average more often as the
loss falls, for a lower error floor. Every T_0 seconds of wall-clock time (here: virtual
seconds, `adacomm-interval`) tau is recomputed from the ratio of the current training loss
to the initial one and, when the learning rate decays, the ratio of the rates:

    tau_l = ceil( sqrt( (eta_0 / eta_l) * F(x_{t = l T_0}) / F(x_{t = 0}) ) * tau_0 )

(the square root comes from the runtime-error bound, whose minimiser over tau grows as
sqrt(F - F_inf), with F_inf taken as 0). The stored copies of the paper reachable here hold
only its abstract, so the equation is cited by section; the form, tau_0 outside the root and
the rate ratio inside, agrees with PaddlePaddle's documentation of its AdaComm optimizer.

Read from the run's history (fedcoop.round_schedule): F is the loss of the workers' average
as the server evaluates it every round (on its evaluation set: the held-out split), F(x_0)
that of the initial model, F(x_{t = l T_0}) that after the first round whose sync completed
at or after l T_0, and eta_l the rate of the step after it. The paper's F is the training
loss; the workers' own mini-batch losses are no stand-in for it, as they are taken along
tau steps on each worker's own shard (biased low after many local steps, and on a non-IID
split), while the average's held-out loss estimates the same objective on IID data. A tau
below 1 is raised to 1 (a loss of 0); a loss that is not finite (no evaluation) leaves tau
at tau_0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedcoop.errors import ConfigError
from fedcoop.round_schedule import LAG, Settled


@dataclass(frozen=True)
class AdaComm:
    """tau_r by the AdaComm rule (module docstring), as a `TauSchedule`."""

    tau0: int
    #: T_0, virtual seconds between updates of tau
    interval: float
    #: the learning rate of global step s (from 1); None: a constant rate
    lr: Callable[[int], float] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tau0, bool) or not isinstance(self.tau0, int) or self.tau0 < 1:
            raise ConfigError("tau", self.tau0, "AdaComm's tau_0: an integer >= 1")
        if not 0 < self.interval < math.inf:
            raise ConfigError("adacomm-interval", self.interval, "virtual seconds > 0")

    def tau(self, round_: int, history: Sequence[Settled]) -> int:
        """tau of round `round_`, from the rounds settled up to round_ - LAG."""
        if len(history) != max(0, round_ - LAG) + 1:
            raise ValueError(
                f"AdaComm decides round {round_} from rounds 0..{max(0, round_ - LAG)}, given "
                f"{len(history)}: replay its taus as a TauSequence where no history is kept"
            )
        interval = math.floor(history[-1].time / self.interval)
        if interval == 0:
            return self.tau0
        # the first round of the current interval: its sync completed at or after l T_0
        first = len(history) - 1
        while math.floor(history[first - 1].time / self.interval) == interval:
            first -= 1
        ratio = history[first].loss / history[0].loss
        if self.lr is not None:
            ratio *= self.lr(1) / self.lr(history[first].steps + 1)
        if not math.isfinite(ratio):
            return self.tau0
        return max(1, math.ceil(math.sqrt(max(ratio, 0.0)) * self.tau0))

    def describe(self) -> str:
        """As results and logs name it."""
        return f"adacomm(tau0={self.tau0}, interval={self.interval:g}s)"
