"""Data sets as tensors in memory, so experiments run offline and identically on every machine.

One module per concern: ``formats`` (IDX and CIFAR readers), ``files`` (where on-disk sets are
found, and the error when they are not), ``images`` (on-disk sets decoded and normalised),
``embedded`` (the MNIST test set shipped in the package, the default), ``generated``
(least squares, Synthetic(alpha, beta)), ``arrays`` (ArrayDataset) and ``datasets`` (the
registry: ``load_dataset``, ``DATASETS``, ``train_test_split``). The names below are the
public ones the rest of fedcoop and its users import from ``fedcoop.data``.
"""

from fedcoop.data.arrays import ArrayDataset
from fedcoop.data.datasets import DATASETS, load_dataset, train_test_split
from fedcoop.data.embedded import (
    EMBEDDED_MNIST_MD5,
    MNIST_MEAN,
    MNIST_STD,
    embedded_mnist_file,
    load_embedded_mnist,
)
from fedcoop.data.files import ENV_ROOT, OFFLINE_LOCATIONS
from fedcoop.data.formats import read_cifar_batch, read_idx
from fedcoop.data.generated import synthetic_federated

__all__ = [
    "DATASETS",
    "EMBEDDED_MNIST_MD5",
    "ENV_ROOT",
    "MNIST_MEAN",
    "MNIST_STD",
    "OFFLINE_LOCATIONS",
    "ArrayDataset",
    "embedded_mnist_file",
    "load_dataset",
    "load_embedded_mnist",
    "read_cifar_batch",
    "read_idx",
    "synthetic_federated",
    "train_test_split",
]
