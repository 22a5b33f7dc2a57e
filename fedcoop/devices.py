"""Devices that differ in speed: each worker's speed factor, and the local steps a round-time
budget gives it.

`device-speeds` says how fast each worker computes relative to `step-time` (a worker of speed
2 takes half as long per step): "equal", a seeded distribution ("lognormal:<sigma>", mean
1; "uniform:<low>:<high>"), or a CSV file with a header and one row per worker, columns
`worker` and `speed` (docs/non-iid-baselines.md#devices-that-differ). With `round-time`
> 0, a round is a time budget instead of a fixed tau: worker i runs
tau_i = max(1, floor(round-time x speed_i / step-time)) local steps, the heterogeneous
tau_i that FedNova normalises (Wang, Liu, Liang, Joshi, Poor, NeurIPS 2020).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from fedcoop.errors import ConfigError

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
        return _read_csv(Path(spec).expanduser(), m)
    raise ConfigError(KEY, spec, TEXT)


def _read_csv(path: Path, m: int) -> np.ndarray:
    """worker,speed rows for workers 0 .. m-1, each once."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(KEY, str(path), f"a readable CSV file ({error.strerror})") from None
    rows = list(csv.DictReader(text.splitlines()))
    header = rows and list(rows[0])
    if not header or not {"worker", "speed"} <= set(header):
        raise ConfigError(f"{KEY} ({path}, row 1)", header, "a header with worker and speed")
    out = np.full(m, np.nan)
    for number, row in enumerate(rows, start=2):
        where = f"{KEY} ({path}, row {number}"
        try:
            worker = int(row["worker"])
        except (TypeError, ValueError):
            worker = -1
        if not 0 <= worker < m:
            raise ConfigError(f"{where}, column worker)", row["worker"], f"0 .. {m - 1}")
        if not np.isnan(out[worker]):
            raise ConfigError(f"{where}, column worker)", worker, "each worker once")
        try:
            speed = float(row["speed"])
        except (TypeError, ValueError):
            speed = math.nan
        if not (0 < speed < math.inf):
            raise ConfigError(f"{where}, column speed)", row["speed"], "a number > 0")
        out[worker] = speed
    missing = np.flatnonzero(np.isnan(out))
    if missing.size:
        raise ConfigError(f"{KEY} ({path})", f"no row for worker {missing[0]}", f"0 .. {m - 1}")
    return out


def local_steps(speed: np.ndarray, round_time: float, step_time: float) -> tuple[int, ...]:
    """tau_i of each worker: the steps its speed fits in `round_time`, at least one."""
    fit = np.floor(round_time * speed / step_time + 1e-9)
    return tuple(max(1, int(v)) for v in fit)
