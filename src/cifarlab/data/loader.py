"""CifarLoader: the device-resident, augmenting batch loader that training uses, for any loop.

The images stay on their device as uint8; each batch is gathered, normalised and augmented there
with tensor operations (data/augment.py), so an epoch costs no per-image Python work and no
host-to-device copies. `training.train.train_epoch` draws its batches from `CifarLoader.batches`,
so a loop written on this class sees exactly the batches cifarlab's own training sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from cifarlab.data.augment import alternating_flips, augment, normalize
from cifarlab.data.formats import MEAN, STD, DataError

FLIP_MODES = ("random", "alternating")


class CifarLoader:
    """Batches of (normalised, augmented float32 images, int64 labels) from uint8 images on a device.

    `images` are uint8 (N, 3, H, W), `labels` int64 (N,); both are moved to `device` once (default:
    where `images` are). With `shuffle`, each epoch visits the images in a new random order drawn
    from `generator` (seeded from `seed` when not given). `crop_pad` translates each image by up to
    that many pixels (reflecting at the borders) and `flip` mirrors images left-right: at random, or
    (`flip_mode="alternating"`, airbench) a random half chosen once from `seed` and the whole set
    mirrored every other epoch. A last batch smaller than `min_last_batch` is dropped (training
    uses 2 per process: a batch of one image breaks BatchNorm).

    Iterating gives one epoch and counts it; `batches(epoch)` gives a chosen epoch's batches.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        crop_pad: int = 0,
        flip: bool = False,
        flip_mode: str = "random",
        seed: int = 0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        min_last_batch: int = 1,
    ):
        _check_arguments(images, labels, batch_size, crop_pad, flip_mode)
        device = torch.device(device) if device is not None else images.device
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.crop_pad, self.flip, self.flip_mode, self.seed = crop_pad, flip, flip_mode, seed
        self.generator = generator if generator is not None else torch.Generator(device=device).manual_seed(seed)
        self.mean, self.std = tuple(mean), tuple(std)
        self.min_last_batch = min_last_batch
        self.epoch = 0  # epochs iterated so far

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def images_per_epoch(self) -> int:
        """The images an epoch visits: all but a dropped last batch."""
        n = len(self.images)
        return n - n % self.batch_size if 0 < n % self.batch_size < self.min_last_batch else n

    def __len__(self) -> int:
        """Batches per epoch."""
        return math.ceil(self.images_per_epoch / self.batch_size)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` (from 1; alternating flips depend on it), in a fresh random order."""
        n = len(self.images)
        order = torch.randperm(n, device=self.device, generator=self.generator) if self.shuffle else torch.arange(n, device=self.device)
        order = order[: self.images_per_epoch]
        flips = None
        if self.flip and self.flip_mode == "alternating":
            flips = alternating_flips(len(self.images), self.seed, epoch).to(self.device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            x = normalize(self.images[idx], self.mean, self.std)
            x = augment(x, self.crop_pad, self.flip, self.generator, None if flips is None else flips[idx])
            yield x, self.labels[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.epoch += 1
        return self.batches(self.epoch)


def _check_arguments(images: torch.Tensor, labels: torch.Tensor, batch_size: int, crop_pad: int, flip_mode: str) -> None:
    """One-line DataErrors for arguments that would otherwise fail deep inside a batch."""
    if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4):
        raise DataError(f"CifarLoader: images must be a uint8 tensor (N, C, H, W), got {_describe(images)}")
    if not (isinstance(labels, torch.Tensor) and labels.dim() == 1 and len(labels) == len(images)):
        raise DataError(f"CifarLoader: labels must be a 1-d tensor of {len(images)} labels, got {_describe(labels)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"CifarLoader: batch_size must be a positive integer, got {batch_size!r}")
    if not 0 <= crop_pad <= 8:
        raise DataError(f"CifarLoader: crop_pad must be 0 to 8, got {crop_pad!r}")
    if flip_mode not in FLIP_MODES:
        raise DataError(f"CifarLoader: flip_mode must be one of {', '.join(FLIP_MODES)}, got {flip_mode!r}")


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
