"""The workers' states as the server knows them, and the checkpoints made of them.

A checkpoint is the Coordinator's cut of a settled round plus every worker's own state as
of that round (its model, momentum, snapshot and pending gradient live on its device). The
ledger is the one owner of what the server has seen of those states: the state each round's
reply carried (when asked to, see `send-state`), the last state seen per worker and the
last round it answered, and, after a resume, the state each worker's next message must
restore. It writes checkpoints (`fedcoop.checkpoint`) and picks them up.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from clients import messages
from clients.messages import NO_STATE, WorkerSnapshot
from fedcoop import checkpoint
from fedcoop.clock import VirtualClock
from fedcoop.config import RunConfig
from fedcoop.coordinator import Coordinator
from strategies.result import RunResult
from strategies.transport import GridTransport

LOG = logging.getLogger("flwr.fedcoop")


class StateLedger:
    """The workers' states of a run of `config` whose checkpoints go to `run_dir` (None:
    no checkpoints)."""

    def __init__(self, config: RunConfig, run_dir: Path | None) -> None:
        self.config = config
        self.run_dir = run_dir
        #: per worker and round: its state as that round's reply carried it
        self._states: dict[int, dict[int, WorkerSnapshot]] = {}
        #: per worker: the last state seen (reply or query), and the last round it answered
        #: (its device's state is the one seen if that is the round it answered last)
        self._known: dict[int, WorkerSnapshot] = {}
        self._answered: dict[int, int] = {}
        #: per worker: the state its next message must restore (resume)
        self._to_restore: dict[int, WorkerSnapshot] = {}
        #: the survivors of each settled round, for the clock of a resumed run
        self.survivors: list[list[int]] = []
        #: wall seconds the run had taken before it was resumed
        self.elapsed = 0.0

    # -- what the rounds tell it ----------------------------------------------------------
    def wants_state(self, round_: int, final: bool) -> bool:
        """Whether the reply that reports `round_` must carry the worker's state."""
        every = self.config.checkpoint_every
        return self.run_dir is not None and bool(every) and round_ % every == 0 and not final

    def answered(self, worker: int, round_: int, state: WorkerSnapshot | None) -> None:
        """Worker answered `round_` (its reply's state, if it carried one)."""
        self._answered[worker] = round_
        if state is not None:
            self._states.setdefault(worker, {})[round_] = state
            self._known[worker] = state

    def moved_on(self, worker: int, round_: int) -> None:
        """A late reply of worker's came: its device holds `round_` and restored any state."""
        self._answered[worker] = round_
        self.delivered(worker)

    def delivered(self, worker: int) -> None:
        """Worker's device took a message: a state it was to restore is installed."""
        self._to_restore.pop(worker, None)

    def to_restore(self, worker: int) -> WorkerSnapshot | None:
        """The state worker's next message must install (kept until a reply says the device
        has it), or None."""
        return self._to_restore.get(worker)

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint(
        self,
        transport: GridTransport[Any],
        coordinator: Coordinator,
        cut: dict[str, Any],
        node_of: list[int],
        result: RunResult,
    ) -> None:
        """Write the checkpoint of settled round cut["settled"], with every worker's state
        as of that cut: from its round reply, or asked now from a worker that has been
        idle since, or, for one that cannot answer (a dead device), the state it was last
        seen in if it has not answered a round since. A cut some worker's state cannot be
        had for is skipped (the next one counts)."""
        assert self.run_dir is not None
        r = cut["settled"]
        states: dict[int, WorkerSnapshot] = {}
        ask: list[int] = []
        kept = {i: by_round.pop(cut["last"][i], None) for i, by_round in self._states.items()}
        for by_round in self._states.values():
            for old in [k for k in by_round if k <= r]:
                del by_round[old]
        for i, last in enumerate(cut["last"]):
            have = kept.get(i)
            if last == 0:
                states[i] = NO_STATE
            elif have is not None and have.round == last:
                states[i] = have
            elif coordinator.idle_since(i, last):
                ask.append(i)
            else:
                LOG.info("fedcoop: no checkpoint after round %d: worker %d is busy", r, i)
                return
        queries = transport.to_nodes(
            [node_of[i] for i in ask], messages.QUERY_STATE, f"checkpoint-{r}"
        )
        replies = transport.gather(queries, tolerant=True) if queries else []
        worker_of = {node: i for i, node in enumerate(node_of)}
        for reply in replies:
            i = worker_of[reply.metadata.src_node_id]
            problem = "no state"
            try:
                state = WorkerSnapshot.read(messages.reply_record(reply) or {})
            except ValueError as exc:
                state, problem = None, str(exc)
            if state is None:  # taken as missing below
                LOG.warning("fedcoop: worker %d's reply to the state query: %s", i, problem)
                continue
            # a device that has not yet taken the state it is to restore holds that one
            states[i] = state if state.round else self._to_restore.get(i, NO_STATE)
            if state.round:
                self._known[i] = state
        for i in set(ask) - set(states):
            seen = self._known.get(i)
            if i in self._to_restore:
                states[i] = self._to_restore[i]
            elif i not in self._answered:
                states[i] = NO_STATE  # it never completed a round: it holds nothing
            elif seen is not None and seen.round == self._answered[i]:
                states[i] = seen
        if len(states) < len(node_of):
            LOG.warning("fedcoop: no checkpoint after round %d: a worker's state is missing", r)
            return
        checkpoint.write(
            self.run_dir,
            {
                "round": r,
                "config": self.config.to_mapping(),
                "coordinator": cut,
                "workers": {i: _plain(s) for i, s in states.items()},
                "rounds": result.rounds[:r],
                "events": [e for e in result.events if e["round"] <= r],
                "survivors": self.survivors[:r],
                "wall-time": result.rounds[r - 1]["wall-time"],
            },
        )

    def resume(
        self,
        saved: dict[str, Any],
        coordinator: Coordinator,
        clock: VirtualClock,
        result: RunResult,
    ) -> None:
        """Pick up a checkpoint: server state, metrics so far, the clock replayed, and each
        worker's state to restore with its first message."""
        coordinator.restore(saved["coordinator"])
        result.rounds = list(saved["rounds"])
        result.events = list(saved["events"])
        # the interruption itself (a ServerApp or SuperLink that died leaves no word of it)
        result.events.append(
            {
                "round": int(saved["round"]),
                "kind": "resumed",
                "reason": f"the run stopped unfinished after its round-{saved['round']} "
                "checkpoint and was resumed from it: the rounds after it ran again",
            }
        )
        self.survivors = [list(s) for s in saved["survivors"]]
        for row, survivors in zip(result.rounds, self.survivors, strict=True):
            clock.round(row["round"], survivors, row["tau"])
            loss = row.get("test-loss", float("nan"))
            coordinator.observe(row["round"], loss, row["virtual-time"])
        self._to_restore = {int(i): _snapshot(s) for i, s in saved["workers"].items()}
        self.elapsed = float(saved["wall-time"])


def _plain(state: WorkerSnapshot) -> dict[str, Any] | None:
    """A snapshot as a checkpoint holds it (None: the worker holds nothing)."""
    if state.round == 0:
        return None
    arrays = {k: messages.decode(v) if isinstance(v, bytes) else v for k, v in state.arrays.items()}
    return {"round": state.round, "steps": state.steps, "arrays": arrays}


def _snapshot(saved: dict[str, Any] | None) -> WorkerSnapshot:
    """The snapshot a checkpoint holds."""
    if saved is None:
        return NO_STATE
    return WorkerSnapshot(int(saved["round"]), int(saved["steps"]), dict(saved["arrays"]))
