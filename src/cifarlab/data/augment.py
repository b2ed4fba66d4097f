"""Batched, device-side image preprocessing: normalisation, random crop, horizontal flip.

Every function takes a whole batch (N, C, H, W) and does tensor operations on the
batch's device: no per-image Python work anywhere in the training loop.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def normalize(images: torch.Tensor, mean, std, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels (N, 3, H, W) -> float tensor with zero mean and unit variance per channel."""
    mean_t, std_t = pixel_statistics(images.device, tuple(map(float, mean)), tuple(map(float, std)))
    return ((images.float() - mean_t) / std_t).to(dtype)


@functools.lru_cache(maxsize=16)
def pixel_statistics(device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std in pixel units (1, C, 1, 1) on `device`, built once per device and values.

    Building them from Python numbers on every call would be a host-to-device copy (and on CUDA a
    wait for it) in every training step. Callers must not modify them in place.
    """
    as_pixels = lambda values: (torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1) * 255).to(device)  # noqa: E731
    with torch.inference_mode(False):  # ordinary tensors even when first asked for under inference_mode
        return as_pixels(mean), as_pixels(std)


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    return flip_where(images, torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5)


def alternating_flips(count: int, seed: int, epoch: int) -> torch.Tensor:
    """Which of `count` images to mirror in `epoch` (1-based) under airbench's alternating flip:
    a random half chosen once from `seed`, the other half on every even epoch. Every image is seen
    both ways in any two consecutive epochs, which random flips do not promise."""
    chosen = torch.rand(count, generator=torch.Generator().manual_seed(seed)) < 0.5
    return chosen ^ (epoch % 2 == 0)


def flip_where(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the images whose mask entry is True."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by up to `pad` pixels in each direction, reflecting at the borders.

    Equivalent to padding by `pad` and taking a random crop of the original size.
    """
    if pad <= 0:
        return images
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    shifts = torch.randint(0, 2 * pad + 1, (2, n), device=images.device, generator=generator)
    rows = shifts[0].view(n, 1) + torch.arange(h, device=images.device)  # (n, h)
    cols = shifts[1].view(n, 1) + torch.arange(w, device=images.device)  # (n, w)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[batch, chans, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def augment(
    images: torch.Tensor,
    crop_pad: int,
    flip: bool,
    generator: torch.Generator | None = None,
    flip_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training augmentation a config asks for (none when crop_pad=0 and flip=False);
    `flip_mask` (alternating flips) decides the flips instead of chance."""
    if crop_pad:
        images = random_crop(images, crop_pad, generator)
    if flip and flip_mask is not None:
        images = flip_where(images, flip_mask)
    elif flip:
        images = random_flip(images, generator)
    return images
