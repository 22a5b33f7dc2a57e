"""Data sets generated locally from a fixed seed: a least-squares problem and FedProx's
Synthetic(alpha, beta) benchmark (Li et al., 2020). Both are the same arrays on every machine.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from fedcoop.data.arrays import ArrayDataset
from fedcoop.errors import ConfigError


def least_squares() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed linear regression problem (203 samples, 10 features, float64 targets).

    Full-batch gradients on it are exact and deterministic, which is what the equivalence
    tests need to hold the Flower path to the papers' matrix rule at 1e-6; 203 samples split
    unevenly, so sample-weighted averaging differs from the plain mean.
    """
    rng = np.random.default_rng(20181)
    x = rng.normal(size=(203, 10))
    y = x @ rng.normal(size=10) + 0.5 * rng.normal(size=203)
    return torch.from_numpy(x), torch.from_numpy(y)


SYNTHETIC_DEVICES = 30
SYNTHETIC_DIMENSION = 60
SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN_FRACTION = 0.9


def _synthetic_seed(alpha: float, beta: float, iid: bool) -> int:
    """Generator seed fixed by (alpha, beta) alone (the IID variant uses neither), stable
    across processes and platforms because it hashes the floats' exact hex form."""
    key = "synthetic-iid" if iid else f"synthetic:{float(alpha).hex()}:{float(beta).hex()}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def check_synthetic_parameters(alpha: object, beta: object) -> None:
    """Refuse an alpha or beta that is not a finite standard deviation, naming the config key."""
    for parameter, value in (("synthetic_alpha", alpha), ("synthetic_beta", beta)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and value >= 0)
        ):
            raise ConfigError(parameter, value, "must be a finite number >= 0 (a std deviation)")


def synthetic_federated(
    alpha: float = 1.0, beta: float = 1.0, *, iid: bool = False
) -> tuple[ArrayDataset, ArrayDataset]:
    """The Synthetic(alpha, beta) benchmark of FedProx: 30 devices, 60 features, 10 classes.

    Device k has n_k = int(lognormal(4, 2)) + 50 samples. Non-IID: u_k ~ N(0, alpha),
    W_k ~ N(u_k, 1) (60 x 10), b_k ~ N(u_k, 1); B_k ~ N(0, beta), v_k ~ N(B_k, 1) (60);
    x ~ N(v_k, diag(j^-1.2)), y = argmax(softmax(x W_k + b_k)). IID: one W, b ~ N(0, 1) for all
    devices and v_k = 0, so alpha and beta play no part. alpha and beta are standard
    deviations, as in the reference code (github.com/litian96/FedProx, data/synthetic_*).
    Each device's samples are shuffled and its first int(0.9 n_k) go to training, the rest to
    testing. x is float32 as generated (not normalised: the benchmark is defined on this scale),
    y int64, and ``group`` is the device id. The generator's seed depends on (alpha, beta)
    only, so the data set is one fixed object for given parameters.
    """
    check_synthetic_parameters(alpha, beta)
    rng = np.random.default_rng(_synthetic_seed(alpha, beta, iid))
    devices, dim, classes = SYNTHETIC_DEVICES, SYNTHETIC_DIMENSION, SYNTHETIC_CLASSES
    sizes = rng.lognormal(4, 2, devices).astype(np.int64) + 50
    scale = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # sqrt of diag(j^-1.2)
    if iid:
        means = np.zeros((devices, dim))
        w_global = rng.normal(0, 1, (dim, classes))
        b_global = rng.normal(0, 1, classes)
    else:
        u = rng.normal(0, alpha, devices)
        big_b = rng.normal(0, beta, devices)
        means = rng.normal(big_b[:, None], 1, (devices, dim))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("xtr", "ytr", "gtr", "xte", "yte", "gte")}
    for k in range(devices):
        if iid:
            w, b = w_global, b_global
        else:
            w = rng.normal(u[k], 1, (dim, classes))
            b = rng.normal(u[k], 1, classes)
        x = means[k] + rng.normal(size=(sizes[k], dim)) * scale
        y = np.argmax(x @ w + b, axis=1)  # softmax is monotone, so argmax of the logits
        order = rng.permutation(sizes[k])
        num_train = int(SYNTHETIC_TRAIN_FRACTION * sizes[k])
        for suffix, rows in (("tr", order[:num_train]), ("te", order[num_train:])):
            parts["x" + suffix].append(x[rows])
            parts["y" + suffix].append(y[rows])
            parts["g" + suffix].append(np.full(len(rows), k, dtype=np.int64))

    def dataset(suffix: str) -> ArrayDataset:
        return ArrayDataset(
            torch.from_numpy(np.concatenate(parts["x" + suffix]).astype(np.float32)),
            torch.from_numpy(np.concatenate(parts["y" + suffix]).astype(np.int64)),
            torch.from_numpy(np.concatenate(parts["g" + suffix])),
        )

    return dataset("tr"), dataset("te")
