"""Learning-rate schedules as pure functions of the global step, so any worker can recompute them.

The papers' CIFAR-10 runs (Overlap-Local-SGD, section 5, following PowerSGD) train ResNet-18
for 300 epochs with base learning rate 0.1 per worker scaled linearly by the number of workers,
a 5-epoch linear warm-up from the unscaled 0.1 (Goyal et al., 2017, "gradual warmup"), and a
decay by 10 after epochs 150 and 250. ``paper_schedule`` builds exactly that; ``LRSchedule``
is the general form (linear warm-up, then step decay) and ``constant`` the trivial one.

Steps count from 1. Step s runs after s - 1 steps, i.e. after (s - 1) / steps_per_epoch epochs;
a boundary at epoch e therefore first affects step e * steps_per_epoch + 1, the first step of
epoch e + 1 ("decayed after epoch 150").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from numbers import Integral, Real

from fedcoop.errors import ConfigError


def _number(name: str, value: object, *, positive: bool) -> float:
    """``value`` as a float, or a ConfigError unless it is a finite (positive / >= 0) number."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(name, value, f"must be a finite number {bound}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(name, value, f"must be a finite number {bound}")
    return float(value)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0:
        raise ConfigError(name, value, "must be a positive integer")
    return int(value)


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up to ``base_lr``, then a factor ``decay_factor`` at each of ``decay_epochs``.

    During the first ``warmup_epochs * steps_per_epoch`` steps the rate rises linearly from
    ``warmup_start`` (at step 1) towards ``base_lr``, which the first step after the warm-up
    reaches; Goyal et al. start at the unscaled single-worker rate and end at the rate scaled
    by the number of workers. ``warmup_start`` must be given when there is a warm-up (no
    default could guess the unscaled rate) and is ``base_lr`` otherwise. Then every decay
    epoch e with (step - 1) >= e * steps_per_epoch multiplies the rate by ``decay_factor``.
    Epochs may be fractional; ``decay_epochs`` must rise strictly and not fall inside the
    warm-up. Frozen and hashable, so a schedule can sit in a config.
    """

    base_lr: float
    warmup_epochs: float = 0
    decay_epochs: tuple[float, ...] = ()
    decay_factor: float = 0.1
    steps_per_epoch: int = 1
    warmup_start: float | None = None

    def __post_init__(self) -> None:
        _number("base_lr", self.base_lr, positive=True)
        warmup = _number("warmup_epochs", self.warmup_epochs, positive=False)
        _positive_int("steps_per_epoch", self.steps_per_epoch)
        decay_factor = _number("decay_factor", self.decay_factor, positive=True)
        if decay_factor > 1:
            raise ConfigError("decay_factor", self.decay_factor, "must lie in (0, 1]")
        if isinstance(self.decay_epochs, str | bytes) or not hasattr(self.decay_epochs, "__iter__"):
            raise ConfigError("decay_epochs", self.decay_epochs, "must be a sequence of epochs")
        epochs = tuple(self.decay_epochs)
        for epoch in epochs:
            _number("decay_epochs", epoch, positive=True)
        if any(b <= a for a, b in pairwise(epochs)):
            raise ConfigError("decay_epochs", epochs, "must rise strictly")
        if epochs and epochs[0] < warmup:
            raise ConfigError(
                "decay_epochs", epochs, f"must not fall inside the {warmup}-epoch warm-up"
            )
        object.__setattr__(self, "decay_epochs", epochs)  # a list becomes a (hashable) tuple
        if self.warmup_start is None:
            if warmup > 0:
                raise ConfigError(
                    "warmup_start",
                    None,
                    f"must be given with warmup_epochs={self.warmup_epochs}: the rate to warm "
                    "up from, e.g. the unscaled single-worker rate",
                )
            object.__setattr__(self, "warmup_start", self.base_lr)
        else:
            _number("warmup_start", self.warmup_start, positive=False)

    @property
    def warmup_steps(self) -> float:
        """Length of the warm-up in steps (fractional if warmup_epochs * steps_per_epoch is)."""
        return self.warmup_epochs * self.steps_per_epoch

    def lr(self, step: int) -> float:
        """The learning rate of global step ``step`` (1 for the first step)."""
        if isinstance(step, bool) or not isinstance(step, Integral) or step < 1:
            raise ConfigError("step", step, "must be an integer >= 1 (steps count from 1)")
        done = int(step) - 1
        rate = self.base_lr
        if done < self.warmup_steps:
            start = float(self.warmup_start)  # never None after __post_init__
            rate = start + (self.base_lr - start) * done / self.warmup_steps
        for epoch in self.decay_epochs:
            if done >= epoch * self.steps_per_epoch:
                rate *= self.decay_factor
        return rate


def constant(lr: float) -> LRSchedule:
    """The same rate at every step."""
    return LRSchedule(base_lr=lr)


def paper_schedule(
    num_workers: int,
    steps_per_epoch: int,
    *,
    base_lr: float = 0.1,
    warmup_epochs: float = 5,
    decay_epochs: tuple[float, ...] = (150, 250),
    decay_factor: float = 0.1,
    scale_by_workers: bool = True,
) -> LRSchedule:
    """The Overlap-Local-SGD / PowerSGD CIFAR-10 schedule for ``num_workers`` workers.

    Peak rate ``base_lr * num_workers`` (linear scaling; ``base_lr`` without
    ``scale_by_workers``), reached by a linear warm-up over ``warmup_epochs`` from the unscaled
    ``base_lr``, then x ``decay_factor`` (0.1) after each of ``decay_epochs``. With 16
    workers: 0.1 at step 1, 1.6 from epoch 5 on, 0.16 after epoch 150 and 0.016 after 250.
    """
    workers = _positive_int("num_workers", num_workers)
    base = _number("base_lr", base_lr, positive=True)
    peak = base * workers if scale_by_workers else base
    return LRSchedule(
        base_lr=peak,
        warmup_epochs=warmup_epochs,
        decay_epochs=decay_epochs,
        decay_factor=decay_factor,
        steps_per_epoch=steps_per_epoch,
        warmup_start=base if warmup_epochs else None,
    )
