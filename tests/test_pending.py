"""The payloads waiting for workers: one per worker, shared by a group, the latest wins."""

from __future__ import annotations

import numpy as np
import pytest

from fedcoop.pending import Payload, PendingPayloads


def payload(worker: int, sync: int, *, reset: bool = False) -> Payload:
    return Payload(worker, sync, 0.5, np.full(3, float(sync)), adopt=True, reset=reset)


def test_a_group_payload_is_held_once_and_made_each_workers_own_when_taken() -> None:
    pending = PendingPayloads(6)
    shared = payload(-1, 1)
    pending.set_group(np.array([0, 2, 5]), shared)
    taken = pending.pop(2)
    assert taken is not None and taken.worker == 2 and taken.mix is shared.mix
    assert pending.pop(2) is None  # taken once
    assert pending.get(5) == Payload(5, 1, 0.5, shared.mix, adopt=True)
    assert sorted(pending.as_dict()) == [0, 5]


def test_the_latest_set_of_a_worker_wins_either_way() -> None:
    pending = PendingPayloads(4)
    pending.set(1, payload(1, 1, reset=True))
    assert pending.resetting() == {1}
    pending.set_group(np.array([1, 3]), payload(-1, 2))  # a later sync: group replaces own
    assert pending.get(1).sync == 2 and pending.resetting() == set()
    pending.set(3, payload(3, 3))  # a later own payload replaces the group's
    assert pending.get(3).sync == 3 and pending.get(1).sync == 2
    pending.set_group(np.array([0]), payload(-1, 4))
    assert {i: p.sync for i, p in pending.as_dict().items()} == {0: 4, 1: 2, 3: 3}


def test_a_shared_payload_cannot_reset() -> None:
    with pytest.raises(ValueError, match="never resets"):
        PendingPayloads(2).set_group(np.array([0, 1]), payload(-1, 1, reset=True))
