"""The MNIST test set shipped inside the package, the default data set (works offline).

The files live in ``fedcoop/assets/mnist/t10k.json`` (see the README beside it), read through
``importlib.resources`` so they are found in an installed wheel and in a Flower App Bundle.
"""

from __future__ import annotations

import base64
import hashlib
import json
from importlib import resources

import numpy as np
import torch

from fedcoop.data.formats import parse_idx
from fedcoop.errors import ConfigError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

EMBEDDED_MNIST_MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


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
        arrays.append(parse_idx(raw, source))
    images, labels = arrays
    if images.shape != (10000, 28, 28) or labels.shape != (10000,):
        raise ConfigError(
            "embedded MNIST shapes",
            (images.shape, labels.shape),
            "must be (10000, 28, 28) images and (10000,) labels",
        )
    return images, labels.astype(np.int64)


def mnist_embedded() -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised N x 1 x 28 x 28 float32 images and int64 labels of the packaged MNIST set."""
    images, labels = load_embedded_mnist()
    x = torch.from_numpy(images).float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
    return x.unsqueeze(1), torch.from_numpy(labels)
