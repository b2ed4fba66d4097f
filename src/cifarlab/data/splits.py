"""The validation split: held out of the training images, class-balanced, the same for every seed."""

from __future__ import annotations

import torch

from cifarlab.data.formats import DataError


def split_train_val(labels: torch.Tensor, val_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic class-balanced split: (train indices, validation indices), both sorted.

    Each class gives val_size // 10 images (the first val_size % 10 classes one more),
    chosen by a generator seeded with `seed` that is independent of the training seed.
    """
    num_classes = int(labels.max()) + 1 if len(labels) else 10
    if not 0 <= val_size < len(labels):
        raise DataError(f"--val-size {val_size} must be between 0 and {len(labels) - 1}")
    gen = torch.Generator().manual_seed(seed)
    val = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        take = val_size // num_classes + (1 if c < val_size % num_classes else 0)
        if take > len(members):
            raise DataError(f"--val-size {val_size} asks for {take} images of class {c}, only {len(members)} exist")
        val.append(members[torch.randperm(len(members), generator=gen)[:take]])
    val_idx = torch.cat(val).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val_idx] = False
    return torch.nonzero(mask).flatten(), val_idx
