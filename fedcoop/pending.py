"""The sync payloads the coordinator holds for workers until their next message.

Each worker has at most one payload waiting: the last sync that concerned it. A sync that
most workers missed (a cohort of 50 out of 10,000) gives every one of those workers the same
column of W_S, hence the same payload: `PendingPayloads` keeps that payload once for the
whole group, with one integer per worker saying which group it is in, so a sync costs the
cohort and not m; the payload is made a worker's own only when its message is sent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


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
    #: the worker missed the sync: its model becomes `mix`, and what it held back for the
    #: sync it missed (a pending gradient, a CoCoD snapshot) is dropped
    adopt: bool = False
    #: its last update was rejected: its momentum buffers are cleared too
    reset: bool = False


class PendingPayloads:
    """One waiting payload per worker at most, shared by the workers of a group (see the
    module docstring); the latest `set` or `set_group` of a worker wins."""

    def __init__(self, num_workers: int) -> None:
        self._own: dict[int, Payload] = {}
        #: per worker: the group whose payload waits for it (-1: its own, or none)
        self._group = np.full(num_workers, -1, dtype=np.int64)
        self._shared: dict[int, Payload] = {}
        #: per group: how many workers its payload waits for (dropped at zero)
        self._refs: dict[int, int] = {}
        self._next_group = 0

    def set(self, worker: int, payload: Payload) -> None:
        """`payload` waits for `worker` (replacing what waited)."""
        self._leave(np.array([worker]))
        self._own[worker] = payload

    def set_group(self, workers: np.ndarray, payload: Payload) -> None:
        """The same `payload` (its `worker` field aside) waits for each of `workers`."""
        if not len(workers):
            return
        if payload.reset:
            raise ValueError("a shared payload never resets: a reset is one worker's own")
        self._leave(workers)
        for i in self._own.keys() & set(workers.tolist()):
            del self._own[i]
        g = self._next_group
        self._group[workers] = g
        self._shared[g], self._refs[g] = payload, len(workers)
        self._next_group += 1

    def _leave(self, workers: np.ndarray) -> None:
        """`workers` no longer wait for their groups' payloads: a group's payload that no
        worker waits for any more is dropped (so a sync costs its groups, not m)."""
        groups = self._group[workers]
        ids, counts = np.unique(groups[groups >= 0], return_counts=True)
        for g, n in zip(ids.tolist(), counts.tolist(), strict=True):
            self._refs[g] -= n
            if not self._refs[g]:
                del self._refs[g], self._shared[g]
        self._group[workers] = -1

    def get(self, worker: int) -> Payload | None:
        """What waits for `worker`, left waiting."""
        g = int(self._group[worker])
        if g >= 0:
            return dataclasses.replace(self._shared[g], worker=worker)
        return self._own.get(worker)

    def pop(self, worker: int) -> Payload | None:
        """What waits for `worker`, now taken (its message carries it)."""
        payload = self.get(worker)
        self._own.pop(worker, None)
        self._leave(np.array([worker]))
        return payload

    def resetting(self) -> set[int]:
        """The workers whose waiting payload resets them (shared ones never do)."""
        return {i for i, payload in self._own.items() if payload.reset}

    def as_dict(self) -> dict[int, Payload]:
        """Every waiting payload by worker (a checkpoint's plain copy)."""
        grouped = np.flatnonzero(self._group >= 0).tolist()
        out = {i: self.get(i) for i in grouped}
        out.update(self._own)
        return {i: p for i, p in sorted(out.items()) if p is not None}
