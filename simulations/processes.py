"""The cohort over every core: the in-process engines' train messages served by worker
processes, each running the same ClientApp code on its share of the cohort.

A round's train messages are split into equal shares in the order of the nodes' partition
ids: at full participation the same nodes go to the same process every round, so a
worker's live state (`clients.worker_state.LIVE`, its tensors already built) stays where it
ran, and a sampled cohort (whose workers rarely train twice in a row) splits evenly; a
worker rebuilt elsewhere from its Context is the same worker, only slower to start. Each
process gets (message, Context) pairs, serves them with the engine's own function
(`train_many` for the vectorized engine, the ClientApp per message for the in-process one)
and sends back the replies and each Context's new state, which the parent puts into its
store: the Contexts in the parent stay the record of truth, so the handshake, evaluation
and checkpoint queries, which the parent serves, read what the processes wrote. The
Coordinator and the strategy stay in the parent. Steps that outlive their message (node
config background-steps) would stay in one process, so they are refused here.

The processes are forked once the data set is loaded (the server loads it before the first
round), so they share its pages copy-on-write rather than each holding a copy; each runs
torch on one thread. Forking needs a CPU run: CUDA cannot be used in a forked child, and
on a GPU one process batches the cohort anyway. Written here rather than with
`concurrent.futures.ProcessPoolExecutor`, which gives no control over which process runs
which task: a node must return to the process holding its worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import torch
from flwr.app import Context, Message

from fedcoop.errors import ConfigError
from fedcoop.model_vectors import default_device

#: serves a batch of (message, context) pairs: a reply or the exception per message
Serve = Callable[[Sequence[tuple[Message, Context]]], list[Message | Exception]]
#: what the parent makes of a message whose handler raised: the error reply Flower sends
ErrorReply = Callable[[Message, BaseException], Message]


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_processes(processes: int) -> None:
    """Refuse a process count the engines cannot use."""
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ConfigError("processes", processes, "an integer >= 1")
    if processes > 1 and default_device().type != "cpu":
        raise ConfigError(
            "processes",
            processes,
            "1 on a GPU (forked processes cannot use CUDA; one process batches the cohort)",
        )


def _serve_forever(conn: Connection, serve: Serve, error_reply: ErrorReply) -> None:
    """A worker process: serve each batch the parent sends until it sends None."""
    torch.set_num_threads(1)
    while (batch := conn.recv()) is not None:
        try:
            replies = serve(batch)
        except Exception as exc:  # serve answers per message; this is its own failure
            replies = [exc] * len(batch)
        out: list[tuple[Message, Any]] = []
        for (msg, context), reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):  # may not pickle: send what Flower would
                reply = error_reply(msg, reply)
            out.append((reply, context.state))
        conn.send(out)


class WorkerProcesses:
    """`count` forked processes serving train messages with `serve` (module docstring);
    started at the first batch, stopped by `close`."""

    def __init__(self, count: int, serve: Serve, error_reply: ErrorReply) -> None:
        check_processes(count)
        self.count, self._serve, self._error_reply = count, serve, error_reply
        self._conns: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []

    def _start(self) -> None:
        fork = multiprocessing.get_context("fork")
        for _ in range(self.count):
            parent, child = fork.Pipe()
            proc = fork.Process(
                target=_serve_forever, args=(child, self._serve, self._error_reply), daemon=True
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def serve(
        self, batch: Sequence[tuple[Message, Context]], order: Sequence[int]
    ) -> list[Message]:
        """The replies to `batch`, split in `count` equal contiguous shares by `order` (the
        nodes' partition ids): the same nodes go to the same process whenever the cohort is
        the same (every round, at full participation), and a sampled cohort splits evenly;
        each Context's state becomes the one its process wrote."""
        if not self._procs:
            self._start()
        ranked = sorted(range(len(batch)), key=lambda k: order[k])
        shares = {
            p: ranked[p * len(ranked) // self.count : (p + 1) * len(ranked) // self.count]
            for p in range(self.count)
        }
        shares = {p: members for p, members in shares.items() if members}
        for p, members in shares.items():
            self._conns[p].send([batch[k] for k in members])
        out: list[Message | None] = [None] * len(batch)
        for p, members in shares.items():
            try:
                answers = self._conns[p].recv()
            except EOFError:
                raise RuntimeError(
                    f"worker process {p} died (exit code {self._procs[p].exitcode})"
                ) from None
            for k, (reply, state) in zip(members, answers, strict=True):
                batch[k][1].state = state
                out[k] = reply
        return out  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the processes (a grid's run is over)."""
        for conn in self._conns:
            with contextlib.suppress(OSError):  # a process that died has no pipe left
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        self._conns, self._procs = [], []
