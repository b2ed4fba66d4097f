"""Images in the forms Python code holds them, turned into the model's uint8 (N, 3, 32, 32) input.

File paths and PIL images go through the one conversion `cifarlab predict` uses
(inference/predict.py: `load_image`, `to_model_input`), so a file gets the same pixels, hence the
same logits, from Python as from the command line. A 32x32 uint8 array or tensor is taken as is;
an array of any other size becomes a PIL image and is converted like a file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarlab.errors import CifarlabError
from cifarlab.inference.predict import SIZE, ImageError, load_image, to_model_input


class InputError(CifarlabError, ValueError):
    """An image (or batch) in a form the model cannot take; the message names which one and why."""


def as_model_input(images: Any) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) RGB from one image or a batch or list of them.

    Accepted: a file path (str or Path), a PIL image, a uint8 numpy array (H, W, 3) or (H, W) or a
    batch (N, H, W, 3), a uint8 tensor (3, 32, 32) or (N, 3, 32, 32), or a list mixing these.
    """
    if isinstance(images, torch.Tensor):
        return _tensor_batch(images, "images")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return torch.cat([_one(a, f"images[{i}]") for i, a in enumerate(images)])
    if isinstance(images, (str, Path, np.ndarray)) or _is_pil(images):
        return _one(images, "image")
    if not isinstance(images, Iterable):
        raise InputError(f"images: expected a path, PIL image, uint8 array or tensor, or a list of them; got {type(images).__name__}")
    batch = [_one(image, f"images[{i}]") for i, image in enumerate(images)]
    if not batch:
        raise InputError("images: the list is empty")
    return torch.cat(batch)


def _one(image: Any, where: str) -> torch.Tensor:
    """One image as uint8 (1, 3, 32, 32)."""
    if isinstance(image, (str, Path)):
        try:
            return load_image(image).pixels.unsqueeze(0)
        except ImageError as e:
            raise InputError(f"{image}: {e}") from None
    if isinstance(image, torch.Tensor):
        return _tensor_batch(image.unsqueeze(0) if image.dim() == 3 else image, where)
    if isinstance(image, np.ndarray):
        return _array(image, where)
    if _is_pil(image):
        return to_model_input(image)[0].unsqueeze(0)
    raise InputError(f"{where}: expected a path, PIL image, uint8 array or tensor, got {type(image).__name__}")


def _array(array: np.ndarray, where: str) -> torch.Tensor:
    if array.dtype != np.uint8:
        raise InputError(f"{where}: arrays must be uint8 pixels (0-255), got {array.dtype}")
    if array.ndim == 3 and array.shape == (SIZE, SIZE, 3):
        return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0).contiguous()
    if array.ndim in (2, 3) and (array.ndim == 2 or array.shape[2] in (1, 3, 4)):
        from PIL import Image

        return to_model_input(Image.fromarray(array.squeeze(2) if array.ndim == 3 and array.shape[2] == 1 else array))[0].unsqueeze(0)
    raise InputError(f"{where}: arrays must be (height, width, 3) RGB, (height, width) grey or RGBA; got shape {array.shape}")


def _tensor_batch(tensor: torch.Tensor, where: str) -> torch.Tensor:
    if tensor.dtype != torch.uint8:
        raise InputError(f"{where}: tensors must be uint8 pixels (0-255), got {tensor.dtype}")
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 4 or tuple(tensor.shape[1:]) != (3, SIZE, SIZE):
        raise InputError(f"{where}: tensors must be (3, {SIZE}, {SIZE}) or (N, 3, {SIZE}, {SIZE}), got shape {tuple(tensor.shape)}")
    return tensor.cpu()


def _is_pil(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(value, Image.Image)
