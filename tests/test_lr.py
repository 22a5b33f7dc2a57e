"""Learning-rate schedules: the papers' warm-up and step decay at exact steps, and refusals."""

from __future__ import annotations

from itertools import pairwise

import pytest

from fedcoop.errors import ConfigError
from fedcoop.lr import LRSchedule, constant, paper_schedule

STEPS = 98  # steps per epoch: CIFAR-10's 50,000 images / (16 workers x 32) would be 97.7


def test_paper_schedule_for_16_workers() -> None:
    schedule = paper_schedule(16, STEPS)
    assert schedule == LRSchedule(
        base_lr=1.6,
        warmup_epochs=5,
        decay_epochs=(150, 250),
        decay_factor=0.1,
        steps_per_epoch=STEPS,
        warmup_start=0.1,
    )
    lr = schedule.lr
    warmup = 5 * STEPS
    assert lr(1) == pytest.approx(0.1)  # warm-up starts at the unscaled rate
    assert lr(2) == pytest.approx(0.1 + 1.5 / warmup)
    assert lr(warmup) == pytest.approx(1.6 - 1.5 / warmup)  # last warm-up step
    assert lr(warmup + 1) == pytest.approx(1.6)  # first step of epoch 6: the scaled rate
    assert lr(150 * STEPS) == pytest.approx(1.6)  # last step of epoch 150
    assert lr(150 * STEPS + 1) == pytest.approx(0.16)  # "decayed by 10 after epoch 150"
    assert lr(250 * STEPS) == pytest.approx(0.16)
    assert lr(250 * STEPS + 1) == pytest.approx(0.016)
    assert lr(300 * STEPS) == pytest.approx(0.016)


def test_warmup_is_linear_and_monotone() -> None:
    schedule = paper_schedule(8, 10)
    rates = [schedule.lr(s) for s in range(1, 52)]
    steps = [b - a for a, b in pairwise(rates)]
    assert all(d > 0 for d in steps[:50]) and rates[50] == pytest.approx(0.8)
    assert max(steps[:50]) == pytest.approx(min(steps[:50]))  # constant increments
    assert steps[0] == pytest.approx((0.8 - 0.1) / 50)


def test_paper_schedule_options() -> None:
    unscaled = paper_schedule(16, STEPS, scale_by_workers=False)
    assert unscaled.base_lr == unscaled.warmup_start == pytest.approx(0.1)
    assert [unscaled.lr(s) for s in (1, 2, 5 * STEPS)] == pytest.approx([0.1] * 3)
    no_warmup = paper_schedule(4, STEPS, warmup_epochs=0, base_lr=0.05, decay_epochs=(2,))
    assert no_warmup.lr(1) == pytest.approx(0.2)
    assert no_warmup.lr(2 * STEPS + 1) == pytest.approx(0.02)
    halving = paper_schedule(2, 10, warmup_epochs=0, decay_epochs=(1, 2), decay_factor=0.5)
    assert [halving.lr(s) for s in (10, 11, 21)] == pytest.approx([0.2, 0.1, 0.05])


def test_constant_schedule() -> None:
    schedule = constant(0.05)
    assert {schedule.lr(s) for s in (1, 2, 10, 10**9)} == {0.05}
    assert schedule.warmup_start == 0.05 and schedule.decay_epochs == ()


def test_fractional_epochs_and_custom_factor() -> None:
    schedule = LRSchedule(
        1.0,
        warmup_epochs=0.5,
        decay_epochs=[1.5],
        decay_factor=0.5,
        steps_per_epoch=4,
        warmup_start=0.0,
    )
    assert schedule.decay_epochs == (1.5,)  # stored as a tuple: the schedule is hashable
    assert hash(schedule) == hash(schedule)
    assert [schedule.lr(s) for s in range(1, 9)] == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5]


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"base_lr": 0.0}, "base_lr"),
        ({"base_lr": float("nan")}, "base_lr"),
        ({"base_lr": "0.1"}, "base_lr"),
        ({"base_lr": 0.1, "warmup_epochs": -1}, "warmup_epochs"),
        ({"base_lr": 0.1, "warmup_epochs": 5}, "warmup_start"),  # no guess at the unscaled rate
        ({"base_lr": 0.1, "warmup_epochs": 5, "warmup_start": -0.1}, "warmup_start"),
        ({"base_lr": 0.1, "steps_per_epoch": 0}, "steps_per_epoch"),
        ({"base_lr": 0.1, "steps_per_epoch": 2.5}, "steps_per_epoch"),
        ({"base_lr": 0.1, "decay_factor": 0.0}, "decay_factor"),
        ({"base_lr": 0.1, "decay_factor": 10.0}, "decay_factor"),
        ({"base_lr": 0.1, "decay_epochs": (250, 150)}, "decay_epochs"),
        ({"base_lr": 0.1, "decay_epochs": (150, 150)}, "decay_epochs"),
        ({"base_lr": 0.1, "decay_epochs": (0,)}, "decay_epochs"),
        ({"base_lr": 0.1, "decay_epochs": "150"}, "decay_epochs"),
        (
            {"base_lr": 0.1, "warmup_epochs": 5, "warmup_start": 0.1, "decay_epochs": (3,)},
            "decay_epochs",
        ),
    ],
)
def test_bad_schedules_are_refused(kwargs: dict[str, object], parameter: str) -> None:
    with pytest.raises(ConfigError) as info:
        LRSchedule(**kwargs)
    assert info.value.parameter == parameter


@pytest.mark.parametrize(
    ("args", "kwargs", "parameter"),
    [
        ((0, 10), {}, "num_workers"),
        ((16, 0), {}, "steps_per_epoch"),
        ((16, 10), {"base_lr": -0.1}, "base_lr"),
        ((16, 10), {"warmup_epochs": 200}, "decay_epochs"),
    ],
)
def test_bad_paper_schedules_are_refused(
    args: tuple[int, int], kwargs: dict[str, object], parameter: str
) -> None:
    with pytest.raises(ConfigError) as info:
        paper_schedule(*args, **kwargs)
    assert info.value.parameter == parameter


@pytest.mark.parametrize("step", [0, -1, 1.0, True, None])
def test_steps_count_from_one(step: object) -> None:
    with pytest.raises(ConfigError) as info:
        constant(0.1).lr(step)  # type: ignore[arg-type]
    assert info.value.parameter == "step"
