"""Eager replies on the worker's side: a message's reply reports the round run since the
previous message, and the new round's local steps run after the reply.

Where the process outlives messages (node config ``background-steps=true``, which the deploy
helper sets), the steps run in a `BackgroundSteps` thread, so that the link carries the reply
and the next message while the worker computes; the message that collects the round waits
for them. Elsewhere (Flower's simulation engine, where the next message may reach another
process) they run before the reply, with the same result, and the outcome waits in
context.state (`clients.worker_state`) for the message that collects it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from flwr.app import Context, RecordDict

from clients import worker_state
from clients.worker_state import FAILURE
from fedcoop.config import RunConfig
from fedcoop.local_rule import WorkerState


@dataclass
class Steps:
    """A round's local steps on one worker, and their outcome once run."""

    round: int
    worker: WorkerState
    config: RunConfig
    keep_snapshot: bool
    #: (mean training loss, seconds) of the steps
    outcome: Future[tuple[float, float]]
    #: evaluate the worker's model once the steps have run (eval-local-workers)
    evaluate: bool = False


class BackgroundSteps:
    """The steps each node (run id, node id) of this process runs after its reply, until
    the next message collects them. The thread pool is made at the first submit (a process
    that never runs eager replies starts no threads) and lives as long as its owner, the
    ClientApp module's instance."""

    def __init__(self, max_workers: int = 4) -> None:
        self.max_workers = max_workers
        self.jobs: OrderedDict[tuple[int, int], Steps] = OrderedDict()
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, context: Context, job: Steps, run: Callable[[], tuple[float, float]]) -> None:
        """Run `run` (the steps of `job`) in the background; its outcome becomes job's."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="fedcoop-steps"
                )
        job.outcome = self._executor.submit(run)
        worker_state.remember(self.jobs, (context.run_id, context.node_id), job)

    def take(self, context: Context) -> Steps | None:
        """The node's background steps, once they have run (None: it has none)."""
        job = self.jobs.pop((context.run_id, context.node_id), None)
        if job is not None:
            job.outcome.exception()  # waits
        return job

    def shutdown(self) -> None:
        """Wait for the steps still running and stop the threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def collected(context: Context, collect: int, send_state: bool) -> RecordDict:
    """The reply that reports round `collect` (0: none yet) from context.state: that
    round's model (`send_state`: and the worker's snapshot), or the failure of its steps,
    raised."""
    if not collect:
        return RecordDict()
    held = worker_state.last_round(context.state)
    failure = context.state.config_records.get(FAILURE)
    if failure is not None and int(failure["round"]) == collect:
        raise RuntimeError(f"the local steps of round {collect} failed:\n{failure['reason']}")
    if held != collect:
        raise ValueError(
            f"asked for the model of round {collect}, but this worker holds round {held}: its "
            "local steps of that round were lost (did the ClientApp process restart?)"
        )
    return worker_state.report(context, send_state)
