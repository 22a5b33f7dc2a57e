"""IDX reading, the embedded MNIST set, the train/test split, ArrayDataset and Synthetic."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcoop import data
from fedcoop.data import (
    EMBEDDED_MNIST_MD5,
    MNIST_MEAN,
    MNIST_STD,
    ArrayDataset,
    embedded_mnist_file,
    generated,
    load_dataset,
    load_embedded_mnist,
    read_idx,
    synthetic_federated,
    train_test_split,
)
from fedcoop.errors import ConfigError
from tests.conftest import idx_bytes


def _write(path: Path, raw: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    return load_embedded_mnist()


@pytest.fixture(scope="module")
def split() -> tuple[ArrayDataset, ArrayDataset]:
    return load_dataset(seed=0)


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10,
        np.array([-(2**31), -1, 0, 7, 2**31 - 1], dtype=np.int32),
        np.array([[1.5, -2.25], [1e-3, 3e8]], dtype=np.float32),
    ],
    ids=["uint8", "int32", "float32"],
)
def test_read_idx_round_trips(tmp_path: Path, array: np.ndarray, compress: bool) -> None:
    path = _write(tmp_path / "a.idx", idx_bytes(array), compress)
    out = read_idx(path)
    assert out.dtype == array.dtype and out.dtype.isnative
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_rejects_truncated_file(tmp_path: Path, compress: bool) -> None:
    raw = idx_bytes(np.zeros((3, 4), dtype=np.uint8))
    path = _write(tmp_path / "short.idx", raw[:-1], compress)
    with pytest.raises(ConfigError, match="needs 12 payload bytes, found 11") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_trailing_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path / "long.idx", idx_bytes(np.zeros(5, np.uint8)) + b"\0", False)
    with pytest.raises(ConfigError, match="needs 5 payload bytes, found 6"):
        read_idx(path)


def test_read_idx_rejects_bad_magic(tmp_path: Path) -> None:
    raw = bytearray(idx_bytes(np.zeros(5, np.uint8)))
    raw[0] = 0x7F
    path = _write(tmp_path / "magic.idx", bytes(raw), False)
    with pytest.raises(ConfigError, match="magic number 7f000801") as info:
        read_idx(path)
    assert info.value.parameter == "path" and info.value.value == str(path)


def test_read_idx_rejects_unknown_type_code(tmp_path: Path) -> None:
    raw = bytearray(idx_bytes(np.zeros(5, np.uint8)))
    raw[2] = 0x0A
    with pytest.raises(ConfigError, match="type code 0x0A"):
        read_idx(_write(tmp_path / "code.idx", bytes(raw), True))


def test_read_idx_rejects_corrupt_gzip(tmp_path: Path) -> None:
    packed = gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))
    with pytest.raises(ConfigError, match="corrupt gzip"):
        read_idx(_write(tmp_path / "cut.idx.gz", packed[: len(packed) // 2], False))


def test_embedded_files_match_published_md5() -> None:
    assert EMBEDDED_MNIST_MD5 == {
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    for name, md5 in EMBEDDED_MNIST_MD5.items():
        assert hashlib.md5(embedded_mnist_file(name)).hexdigest() == md5


def test_embedded_mnist_contents(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = mnist
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert sorted(np.unique(labels).tolist()) == list(range(10))
    assert images.max() == 255 and images.min() == 0


def test_embedded_mnist_detects_corruption(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(EMBEDDED_MNIST_MD5, "t10k-labels-idx1-ubyte.gz", "0" * 32)
    with pytest.raises(ConfigError, match="corrupt") as info:
        load_embedded_mnist()
    assert "t10k-labels-idx1-ubyte.gz" in str(info.value)
    _, labels = load_embedded_mnist(verify=False)
    assert len(labels) == 10000


def test_split_is_disjoint_covering_and_sized() -> None:
    train, test = train_test_split(1001, 0.2, seed=3)
    assert len(test) == 200 and len(train) == 801
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1001))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)


def test_split_is_deterministic_and_seed_dependent() -> None:
    a_train, a_test = train_test_split(500, 0.3, seed=7)
    b_train, b_test = train_test_split(500, 0.3, seed=7)
    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_test, b_test)
    c_train, _ = train_test_split(500, 0.3, seed=8)
    assert not np.array_equal(a_train, c_train)


@pytest.mark.parametrize(
    ("num_samples", "fraction", "seed", "parameter"),
    [
        (100, 0.0, 0, "test_fraction"),
        (100, 1.0, 0, "test_fraction"),
        (100, 0.001, 0, "test_fraction"),
        (1, 0.5, 0, "num_samples"),
        (100, 0.2, -1, "seed"),
    ],
)
def test_split_rejects_bad_input(
    num_samples: int, fraction: float, seed: int, parameter: str
) -> None:
    with pytest.raises(ConfigError) as info:
        train_test_split(num_samples, fraction, seed)
    assert info.value.parameter == parameter


def test_load_dataset_split(
    split: tuple[ArrayDataset, ArrayDataset], mnist: tuple[np.ndarray, np.ndarray]
) -> None:
    train, test = split
    images, labels = mnist
    assert (len(train), len(test)) == (8000, 2000)
    assert train.x.shape == (8000, 1, 28, 28) and train.x.dtype == torch.float32
    assert train.y.dtype == torch.int64 and train.num_classes == test.num_classes == 10
    train_idx, test_idx = train_test_split(10000, 0.2, seed=0)
    np.testing.assert_array_equal(train.y.numpy(), labels[train_idx])
    np.testing.assert_array_equal(test.y.numpy(), labels[test_idx])
    pixels = (test.x.squeeze(1).numpy() * MNIST_STD + MNIST_MEAN) * 255.0
    np.testing.assert_allclose(pixels, images[test_idx], atol=1e-3)
    # MNIST's own statistics normalise its test images to roughly zero mean, unit variance.
    assert abs(float(train.x.mean())) < 0.05 and abs(float(train.x.std()) - 1.0) < 0.05


def test_load_dataset_depends_on_seed(split: tuple[ArrayDataset, ArrayDataset]) -> None:
    train, _ = split
    other, _ = load_dataset(seed=1, test_fraction=0.5)
    assert len(other) == 5000
    assert not torch.equal(train.y[:100], other.y[:100])


def test_load_dataset_rejects_unknown_name() -> None:
    with pytest.raises(ConfigError, match="mnist-embedded") as info:
        load_dataset("cifar-100")
    assert info.value.parameter == "dataset" and "mnist-embedded" in data.DATASETS


def test_array_dataset_behaves_like_a_torch_dataset() -> None:
    ds = ArrayDataset(torch.arange(12.0).reshape(6, 1, 2, 1), torch.tensor([0, 2, 1, 2, 0, 1]))
    assert len(ds) == 6 and ds.num_classes == 3
    x, y = ds[4]
    assert x.flatten().tolist() == [8.0, 9.0] and int(y) == 0
    sub = ds.subset(np.array([5, 1]))
    assert sub.y.tolist() == [1, 2] and sub.x[:, 0, 0, 0].tolist() == [10.0, 2.0]
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4))
    assert [b[0].shape[0] for b in batches] == [4, 2]
    with pytest.raises(ConfigError, match="as many rows as x"):
        ArrayDataset(torch.zeros(3, 1), torch.zeros(2, dtype=torch.int64))


def test_array_dataset_group_is_kept_by_subset_and_checked() -> None:
    ds = ArrayDataset(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), torch.tensor([7, 7, 8, 9]))
    assert ds.subset(np.array([3, 0])).group.tolist() == [9, 7]
    assert ArrayDataset(torch.zeros(2, 1), torch.zeros(2)).subset(np.array([1])).group is None
    for group in (torch.tensor([0, 1]), torch.zeros(4)):
        with pytest.raises(ConfigError, match="int64 vector with one entry per row") as info:
            ArrayDataset(ds.x, ds.y, group)
        assert info.value.parameter == "group"


def test_dataset_names() -> None:
    assert data.DATASETS == (
        "mnist-embedded",
        "least-squares",
        "mnist",
        "fashion-mnist",
        "cifar10",
        "cifar100",
        "synthetic",
        "synthetic-iid",
    )
    with pytest.raises(ConfigError) as info:
        load_dataset("cifar-10")
    assert all(name in info.value.valid for name in data.DATASETS)


def test_least_squares_is_unchanged() -> None:
    train, test = load_dataset("least-squares", seed=0, test_fraction=0.2)
    rng = np.random.default_rng(20181)
    x = rng.normal(size=(203, 10))
    y = x @ rng.normal(size=10) + 0.5 * rng.normal(size=203)
    train_idx, test_idx = train_test_split(203, 0.2, seed=0)
    assert train.x.dtype == train.y.dtype == torch.float64 and train.group is None
    np.testing.assert_array_equal(train.x.numpy(), x[train_idx])
    np.testing.assert_array_equal(test.y.numpy(), y[test_idx])


# Synthetic(alpha, beta) of FedProx.

# n_k of Synthetic(1, 1): pinned, so a change of recipe or seed (or a platform that generates
# other data) fails here instead of silently changing every result built on it.
SYNTHETIC_1_1_SIZES = [
    990, 264, 51, 891, 184, 591, 127, 62, 95, 491, 63, 188, 186, 55, 130,
    185, 96, 54, 492, 1133, 53, 955, 60, 138, 1135, 148, 196, 164, 52, 2991,
]  # fmt: skip


@pytest.fixture(scope="module")
def synthetic() -> tuple[ArrayDataset, ArrayDataset]:
    return load_dataset("synthetic")


def _device_sizes(part: ArrayDataset) -> np.ndarray:
    return np.bincount(part.group.numpy(), minlength=30)


def _label_skew(part: ArrayDataset) -> float:
    """Mean total-variation distance between each device's label mix and the pooled one."""
    y, group = part.y.numpy(), part.group.numpy()
    pooled = np.bincount(y, minlength=10) / len(y)
    mixes = [np.bincount(y[group == k], minlength=10) / np.sum(group == k) for k in range(30)]
    return float(np.mean([0.5 * np.abs(mix - pooled).sum() for mix in mixes]))


@pytest.mark.parametrize("name", ["synthetic", "synthetic-iid"])
def test_synthetic_shapes_devices_and_split(name: str) -> None:
    train, test = load_dataset(name)
    assert train.x.shape[1:] == test.x.shape[1:] == (60,)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.group.dtype == torch.int64
    assert train.num_classes == test.num_classes == 10
    assert set(train.group.tolist()) == set(test.group.tolist()) == set(range(30))
    n_train, n_test = _device_sizes(train), _device_sizes(test)
    sizes = n_train + n_test
    assert sizes.min() >= 50
    np.testing.assert_array_equal(n_train, (0.9 * sizes).astype(np.int64))  # 90/10 per device
    iid = name == "synthetic-iid"
    seed = generated._synthetic_seed(1.0, 1.0, iid)
    drawn = np.random.default_rng(seed).lognormal(4, 2, 30).astype(np.int64) + 50
    np.testing.assert_array_equal(sizes, drawn)  # n_k = int(lognormal(4, 2)) + 50
    # Rows are grouped by device, in device order.
    assert torch.equal(train.group, torch.sort(train.group).values)


def test_synthetic_is_pinned(synthetic: tuple[ArrayDataset, ArrayDataset]) -> None:
    train, test = synthetic
    assert (_device_sizes(train) + _device_sizes(test)).tolist() == SYNTHETIC_1_1_SIZES


def test_synthetic_features_follow_the_recipe(
    synthetic: tuple[ArrayDataset, ArrayDataset],
) -> None:
    train, _ = synthetic
    big = train.x[train.group == 29].double()  # the largest device, 2691 training samples
    # x ~ N(v_k, diag(j^-1.2)): per-feature variance j^-1.2 around the device's own mean.
    expected = torch.arange(1, 61, dtype=torch.float64) ** -1.2
    torch.testing.assert_close(
        big.var(dim=0) / expected, torch.ones(60, dtype=torch.float64), atol=0.15, rtol=0
    )
    # v_k ~ N(B_k, 1) differs between devices; with v_k = 0 every device is centred on 0.
    means = torch.stack([train.x[train.group == k].mean(dim=0) for k in range(30)])
    assert float(means.std(dim=0).mean()) > 0.8
    # IID: every device's sample mean is within noise of 0 (z-scores of 1800 means below 5).
    iid, _ = load_dataset("synthetic-iid")
    for k in range(30):
        rows = iid.x[iid.group == k].double()
        z = rows.mean(dim=0) / (expected / len(rows)).sqrt()
        assert float(z.abs().max()) < 5


def test_synthetic_is_fixed_by_alpha_and_beta(
    synthetic: tuple[ArrayDataset, ArrayDataset],
) -> None:
    train, test = synthetic
    again, again_test = synthetic_federated(1.0, 1.0)  # not the cache: generated afresh
    assert torch.equal(train.x, again.x) and torch.equal(train.y, again.y)
    assert torch.equal(test.group, again_test.group)
    other, _ = load_dataset("synthetic", seed=5, test_fraction=0.5)  # both ignored
    assert other.x is train.x
    half, _ = load_dataset("synthetic", synthetic_alpha=0.5, synthetic_beta=0.5)
    assert torch.equal(half.x, synthetic_federated(0.5, 0.5)[0].x)
    assert half.x.shape != train.x.shape or not torch.equal(half.x, train.x)
    alpha_only, _ = synthetic_federated(0.5, 1.0)
    assert not torch.equal(alpha_only.y[:50], train.y[:50])
    iid_a, _ = load_dataset("synthetic-iid", synthetic_alpha=0.0, synthetic_beta=3.0)
    assert torch.equal(iid_a.x, load_dataset("synthetic-iid")[0].x)  # IID ignores both


def test_synthetic_labels_are_non_iid_unless_iid(
    synthetic: tuple[ArrayDataset, ArrayDataset],
) -> None:
    train, _ = synthetic
    iid, _ = load_dataset("synthetic-iid")
    skew, iid_skew = _label_skew(train), _label_skew(iid)
    assert skew > 0.5 and iid_skew < 0.2 and skew > 3 * iid_skew


@pytest.mark.parametrize(
    ("alpha", "beta", "parameter"),
    [
        (-0.1, 1.0, "synthetic_alpha"),
        (float("nan"), 1.0, "synthetic_alpha"),
        (1.0, float("inf"), "synthetic_beta"),
        (True, 1.0, "synthetic_alpha"),
        (1.0, "1", "synthetic_beta"),
    ],
)
def test_synthetic_rejects_bad_parameters(alpha: object, beta: object, parameter: str) -> None:
    for name in ("synthetic", "synthetic-iid"):
        with pytest.raises(ConfigError, match="finite number >= 0") as info:
            load_dataset(name, synthetic_alpha=alpha, synthetic_beta=beta)
        assert info.value.parameter == parameter
