"""Devices that differ in speed: each worker's speed factor, and the local steps a round-time
budget gives it.

`device-speeds` says how fast each worker computes relative to `step-time` (a worker of speed
2 takes half as long per step): "equal", a seeded distribution ("lognormal:<sigma>", mean
1; "uniform:<low>:<high>"), or a CSV file with a header and one row per worker, columns
`worker` and `speed`, and optionally `bandwidth-mbit` and `latency-ms`, each worker's own
link, and `available`, the windows of virtual time in which it can be sampled
(docs/non-iid-baselines.md#devices-that-differ). With `round-time`
> 0, a round is a time budget instead of a fixed tau: worker i runs
tau_i = max(1, floor(round-time x speed_i / step-time)) local steps, the heterogeneous
tau_i that FedNova normalises (Wang, Liu, Liang, Joshi, Poor, NeurIPS 2020).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedcoop.errors import ConfigError
from fedcoop.links import Link

KEY = "device-speeds"
DISTRIBUTIONS = ("equal", "lognormal:<sigma>", "uniform:<low>:<high>")
TEXT = f"{', '.join(DISTRIBUTIONS)} or a CSV file of worker,speed rows"


def speeds(spec: str, m: int, seed: int) -> np.ndarray:
    """The m workers' speed factors (> 0) that `spec` describes; a ConfigError that names
    the file, row and column of a bad CSV entry."""
    name, _, rest = spec.partition(":")
    if spec == "equal":
        return np.ones(m)
    rng = np.random.default_rng([seed, 0x5EED])
    try:
        if name == "lognormal" and rest:
            sigma = float(rest)
            if math.isfinite(sigma) and sigma >= 0:
                return rng.lognormal(-(sigma**2) / 2, sigma, m)
        if name == "uniform" and rest.count(":") == 1:
            low, high = (float(v) for v in rest.split(":"))
            if 0 < low <= high < math.inf:
                return rng.uniform(low, high, m)
    except ValueError:
        pass
    if spec.endswith(".csv"):
        return table(spec, m).speed.copy()  # the cached table stays as read
    raise ConfigError(KEY, spec, TEXT)


#: a device table's columns: required, the optional link pair (both or neither), and the
#: optional availability windows
SPEED, LINK_COLUMNS, AVAILABLE = "speed", ("bandwidth-mbit", "latency-ms"), "available"
#: a worker's windows of virtual seconds in which it can be sampled
Windows = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class DeviceTable:
    """A device table, read and checked: each worker's speed, its own link (None: the
    table has no link columns) and its availability windows (None: no available column;
    a worker missing from the dict is always available)."""

    speed: np.ndarray
    links: tuple[Link, ...] | None
    windows: dict[int, Windows] | None


def table(spec: str, m: int) -> DeviceTable:
    """The device table file `spec` for m workers; read once per version of the file, as
    the server's checks, the clock and every worker process ask for it."""
    path = Path(spec).expanduser()
    try:
        version = path.stat().st_mtime_ns
    except OSError as error:
        raise ConfigError(KEY, str(path), f"a readable CSV file ({error.strerror})") from None
    return _read_table(path, m, version)


@lru_cache(maxsize=8)
def _read_table(path: Path, m: int, version: int) -> DeviceTable:
    """One row per worker 0 .. m-1, each once: speed (> 0) and, when the header has both,
    bandwidth-mbit (> 0) and latency-ms (>= 0), and available windows; `version` keys the
    cache to the file's modification time."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(KEY, str(path), f"a readable CSV file ({error.strerror})") from None
    rows = list(csv.DictReader(text.splitlines()))
    header = list(rows[0]) if rows else []
    linked = [c for c in LINK_COLUMNS if c in header]
    if not {"worker", SPEED} <= set(header) or len(linked) == 1:
        valid = f"a header with worker and speed (and both or neither of {', '.join(LINK_COLUMNS)})"
        raise ConfigError(f"{KEY} ({path}, row 1)", header, valid)
    columns = {name: np.full(m, np.nan) for name in [SPEED, *linked]}
    windows: dict[int, Windows] = {}
    for number, row in enumerate(rows, start=2):
        where = f"{KEY} ({path}, row {number}"
        try:
            worker = int(row["worker"])
        except (TypeError, ValueError):
            worker = -1
        if not 0 <= worker < m:
            raise ConfigError(f"{where}, column worker)", row["worker"], f"0 .. {m - 1}")
        if not np.isnan(columns[SPEED][worker]):
            raise ConfigError(f"{where}, column worker)", worker, "each worker once")
        for name, values in columns.items():
            value, zero_ok = _number(row[name]), name == "latency-ms"
            if not (0 <= value < math.inf and (zero_ok or value > 0)):
                valid = "a number >= 0" if zero_ok else "a number > 0"
                raise ConfigError(f"{where}, column {name})", row[name], valid)
            values[worker] = value
        if AVAILABLE in header and (own := _windows(row.get(AVAILABLE) or "", where)):
            windows[worker] = own
    missing = np.flatnonzero(np.isnan(columns[SPEED]))
    if missing.size:
        raise ConfigError(f"{KEY} ({path})", f"no row for worker {missing[0]}", f"0 .. {m - 1}")
    links = None
    if linked:
        pairs = zip(columns["bandwidth-mbit"], columns["latency-ms"], strict=True)
        links = tuple(Link.of(latency, mbit) for mbit, latency in pairs)
    return DeviceTable(columns[SPEED], links, windows if AVAILABLE in header else None)


def _number(text: str | None) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _windows(text: str, where: str) -> Windows:
    """An available cell: "start-end" windows of virtual seconds joined by ";" (end may be
    "inf"; empty: always available)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        start, _, end = part.partition("-")
        low, high = _number(start), _number(end)
        if not (0 <= low < high and not math.isnan(high)):
            valid = 'windows "start-end" of virtual seconds, start < end, joined by ";"'
            raise ConfigError(f"{where}, column {AVAILABLE})", text.strip(), valid)
        out.append((low, high))
    return tuple(out)


def links(spec: str, m: int) -> tuple[Link, ...] | None:
    """Each worker's own link, where a device table gives bandwidth-mbit and latency-ms
    (None: every worker is on the config's link)."""
    return table(spec, m).links if spec.endswith(".csv") else None


class Availability:
    """Which workers are available at a virtual time, from a device table's windows (a
    worker without windows always is)."""

    def __init__(self, windows: dict[int, Windows], m: int) -> None:
        self.windows, self.m = windows, m

    def __call__(self, time: float) -> frozenset[int]:
        return frozenset(
            i
            for i in range(self.m)
            if i not in self.windows or any(a <= time < b for a, b in self.windows[i])
        )


def availability(spec: str, m: int) -> Availability | None:
    """The device table's availability windows (None: every worker always available)."""
    if not spec.endswith(".csv"):
        return None
    windows = table(spec, m).windows
    return None if windows is None else Availability(windows, m)


def local_steps(speed: np.ndarray, round_time: float, step_time: float) -> tuple[int, ...]:
    """tau_i of each worker: the steps its speed fits in `round_time`, at least one."""
    fit = np.floor(round_time * speed / step_time + 1e-9)
    return tuple(max(1, int(v)) for v in fit)
