"""A run's checkpoint on the test set, as `report` and `compare` show it for a run that has not
finished (a finished run's figure is its results.json).

Progressive resolution (training/config.py `low_res_epochs`, the `fast` preset's first epochs)
trains and validates with the stem at stride 2, a quarter of the pixels. A checkpoint written in
that phase is a model of that resolution: at full resolution its test accuracy says nothing about
the run (36% against 51% training accuracy, for one newcomer). So such a checkpoint is evaluated
at the resolution it was trained at, as its training and validation figures were, and labelled so.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarlab.common.rundir import CHECKPOINT, RunError
from cifarlab.data import DataError, load_cifar10
from cifarlab.experiments.runs import RunView
from cifarlab.inference.model import Predictor, data_dir_for

LOW_RES_STRIDE = 2  # the stem's stride in progressive resolution's first epochs (training/train.py train_epoch)
CHUNK_BATCHES = 10  # predictions are made in chunks of this many batches, each a progress step


@dataclass(frozen=True)
class Predictions:
    """The checkpoint's softmax outputs on the test set."""

    probs: np.ndarray  # (N, classes) float
    labels: np.ndarray  # (N,) int
    images: np.ndarray  # (N, 3, 32, 32) uint8
    classes: list[str]
    epoch: int | None  # the checkpoint's epoch
    tta: int
    stem_stride: int | None = None  # set when the checkpoint was evaluated at its low training resolution

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(1)

    @property
    def accuracy(self) -> float:
        return float((self.preds == self.labels).mean()) if len(self.labels) else 0.0

    def confusion(self) -> np.ndarray:
        k = len(self.classes)
        return np.bincount(self.labels * k + self.preds, minlength=k * k).reshape(k, k)

    @property
    def source(self) -> str:
        """Where a test figure of these predictions comes from, as report and compare label it."""
        where = f", at its stem stride {self.stem_stride}: not comparable" if self.stem_stride else ""
        return f"checkpoint of epoch {self.epoch}{where}"

    @property
    def resolution_note(self) -> str | None:
        """What the page must say about a checkpoint evaluated at its low training resolution."""
        if self.stem_stride is None:
            return None
        return (
            f"The checkpoint is of epoch {self.epoch}, in progressive resolution's low-resolution phase: it was trained "
            f"with the stem at stride {self.stem_stride} (16x16 feature maps), so its test figures here are measured "
            "at that resolution, as its training and validation figures were. They are not comparable with a "
            "finished run's full-resolution test accuracy; the run's later epochs train at full resolution."
        )


def low_res_stride(model: Predictor) -> int | None:
    """The stem stride the checkpoint's epoch trained at, when progressive resolution had it below full resolution."""
    low_res_epochs = model.state.get("config", {}).get("low_res_epochs") or 0
    epoch = model.epoch
    if isinstance(epoch, int) and epoch <= low_res_epochs and hasattr(model.model, "set_stem_stride"):
        return LOW_RES_STRIDE
    return None


def checkpoint_predictions(
    view: RunView, data_dir: Path | str | None, device: str, log: Callable[[str], None], progress: bool
) -> tuple[Predictions | None, list[str]]:
    """Predictions of the run's checkpoint on the test set, or None and what was missing."""
    if not view.has_checkpoint:
        return None, [f"no {CHECKPOINT} in the run directory (error analysis and calibration need it)"]
    try:
        model = Predictor(view.path / CHECKPOINT, device=device, batch_size=1000)
    except RunError as e:
        return None, [f"checkpoint unusable: {e}"]
    try:
        data = load_cifar10(data_dir_for(data_dir, model.checkpoint), download=False)
    except DataError as e:
        return None, [f"test data not available ({e}); pass --data-dir"]
    stride = low_res_stride(model)
    if stride is not None:
        model.model.set_stem_stride(stride)
    tta = int(view.train.get("tta", 0))
    where = f" at stem stride {stride} (its training resolution)" if stride else ""
    log(f"predicting {len(data.test_images):,} test images with the epoch-{model.epoch} checkpoint on {model.device}{where}")
    logits = _logits(model, data.test_images, tta, log, progress)
    probs = torch.softmax(logits, 1).numpy() if len(logits) else np.zeros((0, len(model.classes)))
    return Predictions(probs, data.test_labels.numpy(), data.test_images.numpy(), model.classes, model.epoch, tta, stride), []


def _logits(model: Predictor, images: torch.Tensor, tta: int, log: Callable[[str], None], progress: bool) -> torch.Tensor:
    """The model's logits in chunks: a progress bar on a terminal, a line per chunk in a log file."""
    from tqdm import tqdm

    chunk = CHUNK_BATCHES * model.batch_size
    on_terminal = progress and sys.stderr.isatty()
    logits = []
    with tqdm(total=len(images), desc="test set", unit="img", leave=False, disable=not on_terminal) as bar:
        for start in range(0, len(images), chunk):
            logits.append(model.logits(images[start : start + chunk], tta))
            bar.update(len(logits[-1]))
            if not on_terminal and len(images) > chunk:
                log(f"  test set: {start + len(logits[-1]):,} of {len(images):,} images")
    return torch.cat(logits) if logits else torch.zeros(0)
