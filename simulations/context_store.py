"""The in-process engines' per-node Contexts, whose states wait on disk past a memory budget.

A node's Context is the record of truth for its worker between messages (model, momentum,
snapshot, held-back gradient). At m = 1,000 workers of the CNN those states are 320 MB, and
a round reads only its cohort's: so the states beyond `budget` bytes, least recently used
first, are pickled to a temporary directory (pickling a RecordDict keeps it exactly) and read
back when their node gets its next message. The Context objects themselves stay, with an
empty state while theirs is on disk. Spilling happens only in `settle`, which the grids call
between deliveries, when no ClientApp holds a context; the directory goes with the store.

Written here rather than taken from a library: Flower's Context has no storage layer of its
own, and a generic disk cache (shelve, diskcache) would hand out copies, where the ClientApp
writes into the very Context object it is given.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path

from flwr.app import Context, RecordDict

#: bytes of worker state kept in memory by default (the CNN's 320 KB: 400 workers)
DEFAULT_BUDGET = 128 * 2**20


def state_bytes(state: RecordDict) -> int:
    """The bytes a state's arrays hold (its config records are a few hundred bytes)."""
    return sum(record.count_bytes() for record in state.array_records.values())


class ContextStore(Mapping[int, Context]):
    """Contexts by node id; those states beyond `budget` bytes wait on disk (None: never)."""

    def __init__(self, contexts: dict[int, Context], budget: int | None = DEFAULT_BUDGET) -> None:
        self._contexts = contexts
        self.budget = budget
        #: nodes whose state is in memory, least recently used first, with its bytes
        self._resident: OrderedDict[int, int] = OrderedDict((n, 0) for n in contexts)
        self._held = 0
        #: nodes handed out since the last settle (their states may have changed)
        self._touched: set[int] = set()
        self._spilled: set[int] = set()
        #: how many times a state was written out
        self.writes = 0
        self._directory: Path | None = None

    def __getitem__(self, node: int) -> Context:
        context = self._contexts[node]
        if node in self._spilled:
            context.state = pickle.loads(self._file(node).read_bytes())
            self._spilled.discard(node)
        self._resident[node] = self._resident.pop(node, 0)  # now the most recently used
        self._touched.add(node)
        return context

    def __iter__(self) -> Iterator[int]:
        return iter(self._contexts)

    def __len__(self) -> int:
        return len(self._contexts)

    def __contains__(self, node: object) -> bool:
        return node in self._contexts

    @property
    def spilled(self) -> int:
        """How many nodes' states are on disk now."""
        return len(self._spilled)

    def settle(self) -> None:
        """Count the states handed out since the last call, then move the least recently
        used states to disk until those in memory fit the budget. Call it only while no
        context is in use: a state written after it was moved would be lost."""
        for node in self._touched:
            bytes_ = state_bytes(self._contexts[node].state)
            self._held += bytes_ - self._resident[node]
            self._resident[node] = bytes_
        self._touched.clear()
        if self.budget is None:
            return
        while self._held > self.budget and self._resident:
            node, bytes_ = self._resident.popitem(last=False)
            if not bytes_:
                continue  # nothing to move (an untrained node): no longer counted
            context = self._contexts[node]
            self._file(node).write_bytes(pickle.dumps(context.state, pickle.HIGHEST_PROTOCOL))
            context.state = RecordDict()
            self._spilled.add(node)
            self._held -= bytes_
            self.writes += 1

    def _file(self, node: int) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="fedcoop-states-"))
            weakref.finalize(self, shutil.rmtree, self._directory, ignore_errors=True)
        return self._directory / f"{node}.pkl"
