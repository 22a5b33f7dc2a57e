"""A virtual clock: the wall-clock time a run would take on a given network, in simulation.

The papers plot error against *runtime* (overlap paper Fig. 1), and a simulation on one
machine has no meaningful wall clock. `VirtualClock` gives every round a virtual time from an
event computation over per-worker times, with no framework and no real waiting:

- Compute: worker i's round r takes tau step durations drawn from `StepTime`. One generator
  seeded by `seed` draws m * tau durations per round (row i for worker i, non-participants'
  rows drawn and dropped), so a worker's durations never depend on who else took part.
- Links: every worker has one link, a serial channel (the paper's communication thread, and
  Flower's one message in flight): it carries one transfer at a time, each taking
  `Link.transfer` (latency + bytes / bandwidth).
- Star pattern (a server or auxiliary node, or a dense W): each worker uploads its model to
  the server and downloads its payload (the model size, or nothing for a column without
  sources). The server's link is the bottleneck shared by the n workers of the round, so
  each transfer gets 1/n of its bandwidth: up = down = latency + n * bytes / bandwidth, and
  n concurrent uploads take exactly that, as a parameter server's would.
- Peer pattern (no auxiliary node and a sparse W, e.g. D-PSGD): worker i sends its model to
  its deg(i) neighbours (nonzero off-diagonal entries of its row of W) over its own
  full-duplex link, latency + deg(i) * bytes / bandwidth, receiving theirs meanwhile; there
  is no download.
- Payload of sync s for worker i (the column i of W, as `fedcoop.coordinator` builds it) is
  available when every worker source of that column that took part in round s has arrived,
  and, for auxiliary sources, when the auxiliary nodes of sync s-1 exist; a column without
  sources is available at once. Auxiliary nodes of sync s exist once every report of round s
  is in (server compute is free).
- Round r of worker i starts when it has finished its previous round and holds the payload
  of sync r-1. A column that reads only auxiliary nodes (EASGD, Overlap-Local-SGD,
  hierarchical, CoCoD-SGD) can fetch sync r's payload (it reads the anchor of sync r-1)
  while computing round r, before uploading round r (sync 1 reads the initial anchor x0,
  which every worker holds): that is how Overlap-Local-SGD hides its communication behind
  the next tau steps, at max(compute, up + down) per round in steady state, where Local SGD
  pays compute + up + down plus the wait for the slowest. docs/virtual-clock.md has the
  closed forms for constant step times.

Devices that differ (`device-speeds`, fedcoop.devices) divide each worker's step durations
by its speed factor; under a round-time budget worker i runs its own tau_i steps; a device
table with links gives each worker its own link (`_transfer` says how the hops combine).

Not modelled: server compute time, asymmetric up/down bandwidth, packet loss, retries and
stragglers that fail (a missed round is a non-participant here), and contention between
rounds on the server link beyond the per-round share.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from fedcoop import devices
from fedcoop.config import RunConfig, check_value
from fedcoop.errors import ConfigError
from fedcoop.links import Link, parse_link
from fedcoop.spec import CooperativeSpec


@dataclass(frozen=True)
class StepTime:
    """The duration of one local step: its mean (seconds), distribution and log-normal sigma.

    Exponential and log-normal durations keep the mean `mean`, so only the spread (the
    stragglers) changes with the distribution.
    """

    mean: float
    distribution: str = "constant"
    sigma: float = 0.5

    def __post_init__(self) -> None:
        """The step-time keys' own constraints (RunConfig's table), for a StepTime built
        without a RunConfig."""
        check_value("step-time", self.mean)
        check_value("step-time-distribution", self.distribution)
        check_value("step-time-sigma", self.sigma)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n step durations with mean `mean` (constant ones draw nothing from rng)."""
        if self.distribution == "constant" or self.mean == 0:
            return np.full(n, float(self.mean))
        if self.distribution == "exponential":
            return rng.exponential(self.mean, n)
        # E[exp(N(mu, s^2))] = exp(mu + s^2 / 2) = mean
        return rng.lognormal(math.log(self.mean) - self.sigma**2 / 2, self.sigma, n)


class VirtualClock:
    """Virtual times of the rounds of one run of `spec` (see the module docstring)."""

    def __init__(
        self,
        spec: CooperativeSpec,
        *,
        model_bytes: int,
        step_time: StepTime,
        link: Link,
        seed: int = 0,
        speeds: np.ndarray | None = None,
        worker_links: tuple[Link, ...] | None = None,
    ) -> None:
        """`speeds`: each worker's speed factor (its steps take step_time / speed; None:
        all 1); `worker_links`: each worker's own link (None: all on `link`;
        fedcoop.devices)."""
        if not isinstance(model_bytes, (int, np.integer)) or model_bytes < 0:
            raise ConfigError("model_bytes", model_bytes, "an integer >= 0")
        m = spec.num_workers
        self.speeds = np.ones(m) if speeds is None else np.asarray(speeds, dtype=np.float64)
        if worker_links is not None and len(worker_links) != m:
            raise ConfigError("device links", len(worker_links), f"one per worker, {m}")
        self.worker_links = worker_links
        if self.speeds.shape != (m,) or not np.all(self.speeds > 0):
            raise ConfigError("device-speeds", f"{self.speeds.shape} speeds", f"{m} numbers > 0")
        self.spec, self.model_bytes, self.step_time, self.link = spec, model_bytes, step_time, link
        self._rng = np.random.default_rng(seed)
        #: the pattern follows the nominal W (E[W_r] under a schedule of W_r)
        self.peer = spec.num_aux == 0 and np.count_nonzero(spec.w) < spec.w.size
        self._links: dict[int, _Links] = {}
        self._done = np.zeros(m)  # when each worker finished its last local steps
        self._channel = np.zeros(m)  # when each worker's link is free
        #: the latest sync whose payload each worker holds; an auxiliary-only column's sync 1
        #: reads the initial anchor x0, which every worker starts with
        self._held = self._links_of(1).prefetch.astype(int)
        self._held_at = np.zeros(m)  # when that payload arrived
        self._arrivals = np.full(m, np.nan)  # the last round's report arrivals (NaN: absent)
        self._arrived = np.arange(0)  # the workers whose reports those are
        self._synced = [0.0]  # sync s complete at the server (auxiliary nodes updated)

    @classmethod
    def from_config(
        cls, config: RunConfig, spec: CooperativeSpec, model_bytes: int
    ) -> VirtualClock:
        """The clock of the config's step-time keys, link and seed."""
        step_time = StepTime(
            config.step_time, config.step_time_distribution, config.step_time_sigma
        )
        return cls(
            spec,
            model_bytes=model_bytes,
            step_time=step_time,
            link=parse_link(config.link),
            seed=config.seed,
            speeds=devices.speeds(config.device_speeds, config.num_clients, config.seed),
            worker_links=devices.links(config.device_speeds, config.num_clients),
        )

    @property
    def rounds(self) -> int:
        """The rounds advanced through so far."""
        return len(self._synced) - 1

    def round(
        self, round_: int, participants: Collection[int] | None = None, tau: int | None = None
    ) -> float:
        """Advance through round `round_` (called for 1, 2, ... in order) in which
        `participants` (worker indices; None = all m) ran `tau` local steps (None: the
        spec's tau_r); return the virtual time (s since the start) at which that round's
        sync is complete at the server (all its reports in, auxiliary nodes updated)."""
        m = self.spec.num_workers
        tau = self.spec.tau_at(round_) if tau is None else tau
        if round_ != self.rounds + 1:
            raise ValueError(f"round {round_} out of order: the clock is at round {self.rounds}")
        workers = sorted(set(range(m) if participants is None else participants))
        if not workers or not all(isinstance(i, (int, np.integer)) and 0 <= i < m for i in workers):
            raise ValueError(f"participants {participants!r}: a non-empty subset of 0..{m - 1}")
        # Drawn for every worker in a fixed order, so no worker's times depend on the others;
        # worker i runs the first tau_i of its row (round-time budgets), at its own speed.
        taus = np.full(m, tau) if self.spec.worker_taus is None else np.array(self.spec.worker_taus)
        width = int(taus.max())
        steps = self.step_time.sample(self._rng, m * width).reshape(m, width)
        arrivals = np.full(m, np.nan)
        share = len(workers)
        links = self._links_of(round_)
        for i in workers:
            if round_ > 1 and self._held[i] < round_ - 1:
                self._fetch(i, round_ - 1, share)
            compute = steps[i, : taus[i]].sum() / self.speeds[i]
            self._done[i] = max(self._done[i], self._held_at[i]) + compute
            if links.prefetch[i] and self._held[i] < round_:
                self._fetch(i, round_, share)
            copies = links.degree[i] if self.peer else share
            if not copies:  # no column of W_r reads it: it sends nothing this round
                arrivals[i] = self._done[i]
                continue
            upload = self._transfer(i, self.model_bytes, copies)
            arrivals[i] = self._channel[i] = max(self._done[i], self._channel[i]) + upload
        self._arrivals = arrivals
        self._arrived = np.flatnonzero(~np.isnan(arrivals))
        if self.spec.w_schedule is not None:  # one W_r per sync: keep the last two
            for old in [r for r in self._links if r < round_ - 1]:
                del self._links[old]
        self._synced.append(max(self._synced[-1], float(np.nanmax(arrivals))))
        return self._synced[-1]

    def finish(self) -> float:
        """The time at which every worker has applied its last sync (the end of the run)."""
        last = self.rounds
        if last == 0:
            return 0.0
        missing = [i for i in range(self.spec.num_workers) if self._held[i] < last]
        delivered = [self._delivery(i, last, len(missing)) for i in missing]
        return max(self._synced[-1], *self._done, *delivered)

    def _available(self, worker: int, sync: int) -> float:
        """When the server (or, peer to peer, the worker) has all that payload `sync` reads.

        Only the last round's reports are kept: a column that reads workers is fetched for
        the last sync only, one that reads only auxiliary nodes possibly for the next.
        """
        links, arrived = self._links_of(sync), self._arrived
        times = self._arrivals[arrived][links.off[arrived, worker]]
        ready = float(times.max()) if times.size else 0.0
        return max(ready, self._synced[sync - 1]) if links.reads_aux[worker] else ready

    def _delivery(self, worker: int, sync: int, share: int) -> float:
        """When payload `sync` arrives at `worker`, the server's link split `share` ways; peer
        to peer the neighbours' models are already there."""
        ready = self._available(worker, sync)
        if self.peer:
            return ready
        start = max(ready, float(self._channel[worker]))
        return start + self._transfer(worker, self._links_of(sync).payload_bytes[worker], share)

    def _transfer(self, worker: int, nbytes: int, copies: int) -> float:
        """Seconds for `worker` to move `copies` x `nbytes`: over the server's link, of which
        it has 1/copies (star), or over its own to its `copies` neighbours (peer). A
        worker's own link (device tables) carries its peer copies, and bounds its share of
        the server's: the slower hop sets the time."""
        own = None if self.worker_links is None else self.worker_links[worker]
        if own is None:
            return self.link.transfer(nbytes * copies)
        if self.peer:
            return own.transfer(nbytes * copies)
        return max(self.link.transfer(nbytes * copies), own.transfer(nbytes))

    def _fetch(self, worker: int, sync: int, share: int) -> None:
        """Deliver payload `sync` to `worker` over its link."""
        at = self._delivery(worker, sync, share)
        self._held[worker], self._held_at[worker] = sync, at
        if not self.peer:
            self._channel[worker] = at

    def degree(self, round_: int) -> np.ndarray:
        """deg(i) in round `round_`: how many workers' columns of W_r read worker i."""
        return self._links_of(round_).degree

    def _links_of(self, sync: int) -> _Links:
        """Who reads whom at `sync` (W_sync; the same for every sync without a schedule)."""
        key = sync if self.spec.w_schedule is not None else 0
        if key not in self._links:
            self._links[key] = _Links.of(
                self.spec.w_at(sync), self.spec.num_workers, self.model_bytes
            )
        return self._links[key]


@dataclass(frozen=True)
class _Links:
    """The transfers one W implies (see the module docstring), as arrays over its columns,
    so that a round reads the cohort's entries and never a list per column of W."""

    #: off[j, i]: column i of W reads node j (j != i)
    off: np.ndarray
    #: per worker column: whether it reads any auxiliary node
    reads_aux: np.ndarray
    #: columns that read only auxiliary nodes: sync r's payload exists before round r ends
    prefetch: np.ndarray
    #: bytes of each column's payload: a model, or nothing for a column without sources
    payload_bytes: np.ndarray
    #: deg(i): the workers whose columns read worker i's model
    degree: np.ndarray

    @classmethod
    def of(cls, w: np.ndarray, m: int, model_bytes: int) -> _Links:
        """The links of W over m workers (and its auxiliary nodes)."""
        off = w != 0
        np.fill_diagonal(off, False)
        reads_aux = off[m:, :m].any(axis=0)
        reads_workers = off[:m, :m].any(axis=0)
        return cls(
            off=off,
            reads_aux=reads_aux,
            prefetch=reads_aux & ~reads_workers,
            payload_bytes=np.where(reads_aux | reads_workers, model_bytes, 0),
            degree=off[:m, :m].sum(axis=1),
        )
