"""Data sets as tensors in memory, so experiments run offline and identically on every machine.

The default data set is the MNIST test set (10,000 images) shipped inside the package under
``fedcoop/assets/mnist``; it is split deterministically into train and test parts. Further data
sets are added by registering a loader in ``_LOADERS``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from os import PathLike

import numpy as np
import torch

from fedcoop.errors import ConfigError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

EMBEDDED_MNIST_MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# IDX type codes and their big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a native-endian numpy array.

    Hand-written rather than using ``torchvision.datasets.MNIST`` because that class insists on
    its own folder layout and download logic, while fedcoop reads files from arbitrary places
    (the package itself, tests' temporary files) with no network.
    """
    with open(path, "rb") as handle:
        raw = handle.read()
    return _parse_idx(raw, str(path))


def _parse_idx(raw: bytes, source: str) -> np.ndarray:
    """Parse IDX bytes; ``source`` names the file in errors so a bad file is easy to find."""

    def bad(reason: str) -> ConfigError:
        return ConfigError("path", source, f"not a valid IDX file: {reason}")

    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise bad(f"corrupt gzip stream ({exc})") from exc
    if len(raw) < 4:
        raise bad(f"{len(raw)} bytes is shorter than the 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0:
        raise bad(f"magic number {raw[:4].hex()} does not start with two zero bytes")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        valid = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise bad(f"type code 0x{code:02X} is not one of {valid}")
    if ndim == 0:
        raise bad("number of dimensions is 0")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise bad(f"header declares {ndim} dimensions but the file ends after {len(raw)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_len
    if found != expected:
        raise bad(f"header shape {shape} needs {expected} payload bytes, found {found}")
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


@dataclass(frozen=True)
class ArrayDataset:
    """Whole data set held as two tensors, so clients slice partitions without a DataLoader copy.

    ``x`` is float (N x C x H x W images, already normalised, or N x d features); ``y`` holds
    int64 class labels 0..C-1, or float targets for regression. Named so as not to clash
    with ``torch.utils.data.TensorDataset``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ConfigError(
                "y", tuple(self.y.shape), f"must have as many rows as x ({self.x.shape[0]})"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One (image, label) pair, so the data set plugs into ``torch.utils.data.DataLoader``."""
        return self.x[index], self.y[index]

    @property
    def num_classes(self) -> int:
        """Number of classes, taken as largest label + 1 because labels are 0..C-1 (0 for
        regression targets)."""
        if not len(self) or self.y.is_floating_point():
            return 0
        return int(self.y.max()) + 1

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The rows at ``indices``, e.g. one client's partition from ``fedcoop.partitions``."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ArrayDataset(self.x[index], self.y[index])


def embedded_mnist_file(name: str) -> bytes:
    """The bytes of one original MNIST .gz file shipped in the package.

    They are stored base64-encoded in ``assets/mnist/t10k.json`` because a Flower App Bundle
    (what ``flwr run`` ships to the SuperLink and SuperNodes) keeps only .py, .toml, .md and
    .json files; the decoded bytes are the published files, which the md5 check confirms.
    """
    doc = json.loads(
        resources.files("fedcoop").joinpath("assets", "mnist", "t10k.json").read_text()
    )
    return base64.b64decode(doc["files"][name])


def load_embedded_mnist(verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The packaged MNIST test set: uint8 images (10000 x 28 x 28) and int64 labels (10000,).

    With ``verify`` the md5 sums are checked first, so a corrupted install fails loudly instead
    of silently training on garbage.
    """
    arrays = []
    for name, md5 in EMBEDDED_MNIST_MD5.items():
        raw = embedded_mnist_file(name)
        source = f"fedcoop/assets/mnist/{name}"
        if verify and (found := hashlib.md5(raw).hexdigest()) != md5:
            raise ConfigError(
                "embedded MNIST file",
                source,
                f"md5 must be {md5} but is {found}; the installed package is corrupt, "
                "reinstall fedcoop",
            )
        arrays.append(_parse_idx(raw, source))
    images, labels = arrays
    if images.shape != (10000, 28, 28) or labels.shape != (10000,):
        raise ConfigError(
            "embedded MNIST shapes",
            (images.shape, labels.shape),
            "must be (10000, 28, 28) images and (10000,) labels",
        )
    return images, labels.astype(np.int64)


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


def _mnist_embedded() -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised N x 1 x 28 x 28 float32 images and int64 labels of the packaged MNIST set."""
    images, labels = load_embedded_mnist()
    x = torch.from_numpy(images).float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
    return x.unsqueeze(1), torch.from_numpy(labels)


def _least_squares() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed linear regression problem (203 samples, 10 features, float64 targets).

    Full-batch gradients on it are exact and deterministic, which is what the equivalence
    tests need to hold the Flower path to the papers' matrix rule at 1e-6; 203 samples split
    unevenly, so sample-weighted averaging differs from the plain mean.
    """
    rng = np.random.default_rng(20181)
    x = rng.normal(size=(203, 10))
    y = x @ rng.normal(size=10) + 0.5 * rng.normal(size=203)
    return torch.from_numpy(x), torch.from_numpy(y)


# Name -> loader of the whole data set as (normalised x, y); register new data sets here.
_LOADERS: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {
    "mnist-embedded": _mnist_embedded,
    "least-squares": _least_squares,
}
DATASETS = tuple(_LOADERS)


def load_dataset(
    name: str = "mnist-embedded", *, seed: int = 0, test_fraction: float = 0.2
) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) split of data set ``name``, a function of (name, seed, test_fraction) alone."""
    if name not in _LOADERS:
        raise ConfigError("dataset", name, f"must be one of {', '.join(DATASETS)}")
    x, y = _LOADERS[name]()
    train, test = train_test_split(len(y), test_fraction, seed)
    full = ArrayDataset(x, y)
    return full.subset(train), full.subset(test)
