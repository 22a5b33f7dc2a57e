"""Per-sample random crop and flip of whole batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedcoop.augment import TRAIN_AUGMENTATION, augmentation_for, random_crop_flip
from fedcoop.errors import ConfigError


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def windows(image: torch.Tensor, padding: int) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Every crop of the zero-padded image, plain and mirrored: (dy, dx, flipped, window)."""
    _, h, w = image.shape
    padded = F.pad(image, (padding,) * 4)
    found = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            window = padded[:, dy : dy + h, dx : dx + w]
            found += [(dy, dx, False, window), (dy, dx, True, window.flip(-1))]
    return found


def match(out: torch.Tensor, image: torch.Tensor, padding: int) -> list[tuple[int, int, bool]]:
    return [(dy, dx, f) for dy, dx, f, win in windows(image, padding) if torch.equal(out, win)]


def test_shape_dtype_and_device_are_kept() -> None:
    x = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    out = random_crop_flip(x, seeded())
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.is_contiguous()
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    assert random_crop_flip(images, seeded()).dtype == torch.uint8
    assert random_crop_flip(x[:0], seeded()).shape == (0, 3, 32, 32)


def test_deterministic_for_a_seed_and_different_for_another() -> None:
    x = torch.randn(32, 3, 32, 32)
    a = random_crop_flip(x, seeded(7))
    assert torch.equal(a, random_crop_flip(x, seeded(7)))
    assert not torch.equal(a, random_crop_flip(x, seeded(8)))
    g = seeded(7)
    assert torch.equal(random_crop_flip(x, g), a)
    assert not torch.equal(random_crop_flip(x, g), a)  # the generator's state moves on


def test_crops_are_shifts_of_the_padded_image_drawn_per_sample() -> None:
    image = torch.randn(3, 12, 10)  # random, so every window of it is unique
    batch = image.expand(200, 3, 12, 10)
    out = random_crop_flip(batch, seeded(1), padding=2)
    seen = set()
    for sample in out:
        found = match(sample, image, padding=2)
        assert len(found) == 1
        seen.add(found[0])
    # Every one of the 5 x 5 offsets and both flips turn up: one draw per sample, not per batch.
    assert {(dy, dx) for dy, dx, _ in seen} == {(dy, dx) for dy in range(5) for dx in range(5)}
    assert {f for *_, f in seen} == {False, True}


def test_flip_of_an_asymmetric_image_mirrors_it() -> None:
    image = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    out = random_crop_flip(image.expand(64, 2, 4, 6), seeded(2), padding=0)
    mirrored = torch.tensor([torch.equal(o, image[0].flip(-1)) for o in out])
    plain = torch.tensor([torch.equal(o, image[0]) for o in out])
    assert bool((mirrored ^ plain).all())  # each sample is exactly one of the two
    assert 16 < int(mirrored.sum()) < 48  # about half are mirrored
    assert out[mirrored][0, 0, 0].tolist() == [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]


def test_padding_is_zeros() -> None:
    x = torch.ones(300, 1, 8, 8)
    out = random_crop_flip(x, seeded(3))
    assert set(out.unique().tolist()) == {0.0, 1.0}
    # A shift of (dy, dx) leaves |dy - 4| zero rows and |dx - 4| zero columns.
    zero_rows = (out == 0).all(dim=3).sum(dim=(1, 2))
    assert int(zero_rows.max()) == 4 and int(zero_rows.min()) == 0


def test_batch_of_one() -> None:
    image = torch.randn(1, 3, 32, 32)
    out = random_crop_flip(image, seeded(4))
    assert out.shape == (1, 3, 32, 32)
    assert len(match(out[0], image[0], padding=4)) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_result_on_the_gpu() -> None:
    x = torch.randn(64, 3, 32, 32)
    on_gpu = random_crop_flip(x.cuda(), seeded(5))
    assert on_gpu.is_cuda
    assert torch.equal(on_gpu.cpu(), random_crop_flip(x, seeded(5)))


@pytest.mark.parametrize(
    ("x", "padding", "parameter"),
    [
        (torch.zeros(3, 32, 32), 4, "x"),
        (torch.zeros(2, 3, 32, 32), -1, "padding"),
        (torch.zeros(2, 3, 32, 32), 1.5, "padding"),
    ],
)
def test_rejects_bad_input(x: torch.Tensor, padding: object, parameter: str) -> None:
    with pytest.raises(ConfigError) as info:
        random_crop_flip(x, seeded(), padding=padding)
    assert info.value.parameter == parameter


def test_augmentation_per_data_set() -> None:
    assert dict(TRAIN_AUGMENTATION) == {"cifar10": random_crop_flip, "cifar100": random_crop_flip}
    assert augmentation_for("cifar10") is random_crop_flip
    assert augmentation_for("cifar100") is random_crop_flip
    for name in ("mnist-embedded", "mnist", "fashion-mnist", "synthetic", "least-squares"):
        assert augmentation_for(name) is None
    with pytest.raises(ConfigError, match="must be one of") as info:
        augmentation_for("cifar-10")
    assert info.value.parameter == "dataset"
