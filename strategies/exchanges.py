"""Which train messages leave now, and what each one's reply reports.

The Coordinator releases dispatches (a round to start on a worker); a dispatch waits here
while its worker has a message out (a worker never has two). Without eager replies a message
starts a dispatch and its reply reports it. With eager replies (`eager-reply`) this module
is the server's side of the protocol: a message collects the round its worker's device has
been running since the previous message and starts the next one, and a device that runs its
final dispatch gets a message that only collects (the worker's side is `clients.eager`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedcoop.coordinator import Coordinator, Dispatch


@dataclass(frozen=True)
class Exchange:
    """One train message and its reply: the message starts `start` (None: it only collects)
    and the reply reports `collect` (None: nothing yet). Without eager replies both are the
    same dispatch."""

    start: Dispatch | None
    collect: Dispatch | None

    @property
    def awaited(self) -> Dispatch:
        """The dispatch whose report this exchange brings, or which it starts."""
        d = self.collect or self.start
        assert d is not None
        return d

    @property
    def round(self) -> int:
        """The round the message belongs to (its traffic is counted there)."""
        return (self.start or self.awaited).round


@dataclass
class Exchanges:
    """The dispatches released and not yet sent, and (eager) the one each device runs; a
    final dispatch goes out only while fewer than `cohort` are in flight, so that m final
    messages (and their replies) are never all held at once."""

    eager: bool
    cohort: int
    queued: dict[int, Dispatch] = field(default_factory=dict)
    #: eager: per worker, the dispatch its device runs (started by a message answered)
    running: dict[int, Dispatch] = field(default_factory=dict)

    def release(self, dispatches: list[Dispatch]) -> None:
        """Dispatches the Coordinator released (`Coordinator.ready`)."""
        for d in dispatches:
            self.queued[d.worker] = d

    def take(self, in_flight: list[Exchange], late: list[Exchange]) -> list[Exchange]:
        """The exchanges to send now: each queued dispatch of a worker with no message out
        (eager: collecting the round its device runs) and, eager, a message that only
        collects for a device that runs its final dispatch."""
        busy = {e.awaited.worker for e in (*in_flight, *late)}
        free = [(i, d) for i, d in sorted(self.queued.items()) if i not in busy]
        room = self.cohort - sum(e.awaited.final for e in in_flight)
        finals = [(i, d) for i, d in free if d.final][: max(0, room)]
        free = [(i, d) for i, d in free if not d.final] + finals
        for i, _ in free:
            del self.queued[i]
        if not self.eager:
            return [Exchange(d, d) for _, d in free]
        out = [Exchange(d, self.running.pop(i, None)) for i, d in free]
        for i, d in sorted(self.running.items()):
            if d.final and i not in busy and i not in self.queued:
                out.append(Exchange(None, self.running.pop(i)))
        return out

    def answered(self, e: Exchange, coordinator: Coordinator) -> None:
        """The reply to `e` came and its report (if any) was taken: eager, unless that
        report was rejected, the device now runs what `e` started."""
        start = e.start
        if (
            start is not None
            and start is not e.collect
            and coordinator.awaiting(start.worker) == start.round
        ):
            self.running[start.worker] = start

    def void(self, worker: int) -> None:
        """Worker missed a report: what its device runs, and what waited for it, is void."""
        self.running.pop(worker, None)
        self.queued.pop(worker, None)
