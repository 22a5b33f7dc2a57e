"""The same equivalence, through Flower's real simulation engine (Ray actors, SuperLink state).

One algorithm per family: periodic (server average), elastic (anchor, Remark-1 rule),
decentralized (peer rule on a ring), and the pipelined overlap and CoCoD-SGD rules, and overlap
with eager replies. The ClientApps run in Ray worker processes, so their state really lives in
Flower's contexts.
"""

from __future__ import annotations

import pytest

from tests.conftest import (
    assert_follows_rule,
    least_squares_config,
    reference_final,
    run_on_simulation_engine,
)

pytestmark = pytest.mark.flower


@pytest.mark.parametrize(
    "changes",
    [
        dict(algorithm="local-sgd"),
        dict(algorithm="easgd", tau=1),
        dict(algorithm="dpsgd", tau=2),
        dict(algorithm="overlap", tau=2),
        dict(algorithm="cocod", tau=2),
        # the steps run before the reply: the next message may reach another Ray actor
        dict(algorithm="overlap", tau=2, eager_reply=True),
    ],
    ids=lambda c: c["algorithm"] + ("-eager" if c.get("eager_reply") else ""),
)
def test_simulation_engine_equals_matrix_rule(changes: dict[str, object]) -> None:
    config = least_squares_config(num_clients=4, **changes)
    result = run_on_simulation_engine(config)
    ref = reference_final(config, result)
    assert_follows_rule(result, ref)
