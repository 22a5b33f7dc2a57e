"""Which train messages leave now, and what each one's reply reports.

The Coordinator releases dispatches (a round to start on a worker); a dispatch waits here
while its worker has a message out (a worker never has two). Without eager replies a message
starts a dispatch and its reply reports it. With eager replies (`eager-reply`) this module
is the server's side of the protocol: a message collects the round its worker's device has
been running since the previous message and starts the next one, and a device that runs its
final dispatch gets a message that only collects (the worker's side is `clients.eager`).
Which round a device runs is the Coordinator's to know (`Coordinator.awaited`): a released
dispatch is queued here, in flight in the transport, or (answered) running on its device.
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
    """The dispatches released and not yet sent; a final dispatch goes out only while fewer
    than `cohort` are in flight, so that m final messages (and their replies) are never all
    held at once."""

    eager: bool
    cohort: int
    queued: dict[int, Dispatch] = field(default_factory=dict)

    def release(self, dispatches: list[Dispatch]) -> None:
        """Dispatches the Coordinator released (`Coordinator.ready`)."""
        for d in dispatches:
            self.queued[d.worker] = d

    def take(
        self, in_flight: list[Exchange], late: list[Exchange], coordinator: Coordinator
    ) -> list[Exchange]:
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
        out = [Exchange(d, _running(coordinator, i, d)) for i, d in free]
        taken = busy | {i for i, _ in free}
        for i in coordinator.awaited_workers:
            if i in taken or i in self.queued:
                continue
            running = coordinator.awaited(i)
            if running is not None and running.final:
                out.append(Exchange(None, running))
        return out

    def void(self, worker: int) -> None:
        """Worker missed a report: the dispatch that waited for it is void."""
        self.queued.pop(worker, None)


def _running(coordinator: Coordinator, worker: int, start: Dispatch) -> Dispatch | None:
    """The dispatch worker's device runs while `start` waits to go out: the one whose report
    the coordinator awaits, unless that is `start` itself (nothing runs yet)."""
    awaited = coordinator.awaited(worker)
    return None if awaited is None or awaited.round == start.round else awaited
