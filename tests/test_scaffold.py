"""SCAFFOLD (Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, ICML 2020), held to a
reference written from the paper's Algorithm 1 (option II control variates, global step
size), through the real strategy and ClientApp on both in-process engines."""

from __future__ import annotations

import numpy as np
import pytest

from clients import messages
from fedcoop import participation
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError
from tests.conftest import (
    assert_paths_agree,
    gradient_oracle,
    least_squares_config,
    run_in_process,
    x0_of,
)


def scaffold_reference(config: RunConfig, taus: tuple[int, ...] | None = None) -> np.ndarray:
    """Algorithm 1, literally: the server samples S, sends (x, c); each i in S runs K steps
    y <- y - eta_l (g_i(y) - c_i + c), sets c_i+ = c_i - c + (x - y) / (K eta_l) and sends
    (y - x, c_i+ - c_i); the server takes x <- x + eta_g mean(dy), c <- c + |S|/N mean(dc).
    (The sampling is fedcoop's seeded draw, which the Coordinator uses too; `taus`: each
    worker's own K under a round-time budget.)"""
    grad = gradient_oracle(config)
    m, lr = config.num_clients, config.lr
    steps = taus or (config.tau,) * m
    x = x0_of(config)
    c = np.zeros_like(x)
    own = [np.zeros_like(x) for _ in range(m)]
    for r in range(1, config.num_rounds + 1):
        cohort = sorted(participation.sample(config.seed, r, m, config.participation))
        dy, dc = [], []
        for i in cohort:
            y = x.copy()
            for _ in range(steps[i]):
                y = y - lr * (grad(i, y, 0) - own[i] + c)
            updated = own[i] - c + (x - y) / (steps[i] * lr)
            dy.append(y - x)
            dc.append(updated - own[i])
            own[i] = updated
        x = x + config.global_lr * np.mean(dy, axis=0)
        c = c + len(cohort) / m * np.mean(dc, axis=0)
    return x


@pytest.mark.cross_path
@pytest.mark.parametrize("engine", ["inprocess", "vectorized"])
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"participation": 0.6},
        {"participation": 0.6, "global_lr": 0.5},
        # a round-time budget: K_i = (6, 1, 6, 7, 1) steps
        {
            "participation": 0.6,
            "round_time": 0.5,
            "step_time": 0.05,
            "device_speeds": "uniform:0.1:1.0",
        },
    ],
    ids=["full", "partial", "partial-global-lr", "partial-own-steps"],
)
def test_scaffold_follows_its_paper(engine: str, changes: dict[str, object]) -> None:
    config = least_squares_config(algorithm="scaffold", num_rounds=6, **changes)
    result, _ = run_in_process(config, engine=engine)
    expected = scaffold_reference(config, result.spec.worker_taus)
    assert result.workers is not None
    for worker in result.workers:  # the final message gives every worker the server's x
        assert_paths_agree(worker, expected)
    # the control variates move the result: Local SGD from the same start ends elsewhere
    plain, _ = run_in_process(config.replace(algorithm="local-sgd", global_lr=1.0))
    assert plain.workers is not None
    assert np.abs(plain.workers[0] - expected).max() > 1e-3


def test_scaffold_sends_c_and_gets_each_c_i_change_both_ways() -> None:
    """SCAFFOLD's traffic is twice Local SGD's: c down with every model, the change of
    c_i up with every reply, and the bytes say so."""
    config = least_squares_config(algorithm="scaffold")
    ours, _ = run_in_process(config)
    plain, _ = run_in_process(config.replace(algorithm="local-sgd"))
    for a, b in zip(ours.rounds[1:], plain.rounds[1:], strict=True):
        assert a["bytes-up"] == 2 * b["bytes-up"]
    assert messages.DELTA in messages.TRAFFIC_VECTORS


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"algorithm": "local-sgd", "global_lr": 0.5}, "global-lr"),
        ({"algorithm": "scaffold", "update_rule": "mix-before-step"}, "update-rule"),
        ({"algorithm": "scaffold", "eager_reply": True}, "eager-reply"),
    ],
)
def test_scaffolds_keys_are_refused_where_they_do_not_apply(
    changes: dict[str, object], key: str
) -> None:
    config = least_squares_config(**changes)
    with pytest.raises(ConfigError) as caught:
        run_in_process(config)
    assert caught.value.parameter == key
