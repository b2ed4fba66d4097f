"""Model evaluation: logits (with optional test-time augmentation), accuracy, confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab import distributed
from cifarlab.augment import normalize
from cifarlab.data import load_cifar10
from cifarlab.errors import CifarlabError
from cifarlab.rundir import (
    EVALUATION,
    atomic_write_json,
    checkpoint_path,
    load_checkpoint,
    model_from_checkpoint,
)
from cifarlab.runtime import autocast, autocast_dtype, memory_format, resolve_device, use_amp


class EvaluateError(CifarlabError):
    """Bad arguments to an evaluation; the message is one line."""


def tta_logits(model: nn.Module, x: torch.Tensor, tta: int) -> torch.Tensor:
    """Logits for a normalised batch under test-time augmentation level `tta`.

    0: the image alone. 1: the mean of the image and its mirror. 2: half of level 1 plus a
    quarter each of level 1 on the image translated one pixel up-left and one down-right.
    """
    if tta == 0:
        return model(x)
    flipped = 0.5 * (model(x) + model(x.flip(-1)))
    if tta == 1:
        return flipped
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[-2:]
    up_left, down_right = padded[..., :h, :w], padded[..., 2:, 2:]
    shifted = [0.5 * (model(t) + model(t.flip(-1))) for t in (up_left, down_right)]
    return 0.5 * flipped + 0.25 * (shifted[0] + shifted[1])


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean,
    std,
    batch_size: int = 1000,
    tta: int = 0,
    amp: bool | str = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """float32 logits (N, classes) on the images' device for uint8 images (N, 3, H, W), in eval mode.

    `amp` is a bool or a config setting ("auto", "bf16", "off") resolved for the images' device.
    """
    was_training = model.training
    model.eval()
    device = images.device
    amp = use_amp(amp, device)
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size], mean, std)
            x = x.contiguous(memory_format=memory_format(channels_last))
            with autocast(device, amp):
                out.append(tta_logits(model, x, tta).float())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 10, device=device)


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    confusion: torch.Tensor  # (classes, classes), rows = true class, columns = prediction

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy

    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (self.confusion.diag() / totals).tolist()

    def to_dict(self, classes) -> dict:
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "error": self.error,
            "per_class_accuracy": dict(zip(classes, self.per_class_accuracy())),
            "confusion_matrix": self.confusion.tolist(),
        }


def score(logits: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> Evaluation:
    """Loss, accuracy and confusion matrix of logits against labels."""
    return _from_counts(_counts(logits, labels, num_classes), num_classes)


def _counts(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float64 [summed loss, confusion matrix (flattened)]: sums, so parts of a data set add up exactly."""
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits.double(), labels, reduction="sum").reshape(1)
    confusion = torch.bincount(labels * num_classes + logits.argmax(1), minlength=num_classes**2)
    return torch.cat([loss, confusion.double()])


def _from_counts(counts: torch.Tensor, num_classes: int) -> Evaluation:
    confusion = counts[1:].round().long().view(num_classes, num_classes).cpu()
    total = int(confusion.sum())
    return Evaluation(
        loss=counts[0].item() / max(1, total),
        accuracy=int(confusion.trace()) / total if total else 0.0,
        confusion=confusion,
    )


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std, **kwargs) -> Evaluation:
    """Evaluate a model on uint8 images; kwargs go to `predict_logits`."""
    return score(predict_logits(model, images, mean, std, **kwargs), labels)


def evaluate_sharded(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std, num_classes: int = 10, **kwargs
) -> Evaluation:
    """`evaluate` split over the processes of a distributed run; alone, `evaluate` itself.

    Each process scores its contiguous slice of the images (no padding, no image twice, unlike
    a DistributedSampler) and the loss sums and confusion matrices are added up: every image
    counts exactly once whatever the number of processes, and every process gets the same
    result (so decisions taken from it, like cutting the learning rate, agree everywhere).
    """
    if distributed.world_size() == 1:
        return evaluate(model, images, labels, mean, std, **kwargs)
    part = distributed.shard(len(images))
    logits = predict_logits(model, images[part], mean, std, **kwargs)
    counts = distributed.all_reduce_sum(_counts(logits, labels[part], num_classes))
    return _from_counts(counts, num_classes)


# ---------------------------------------------------------------- a saved run on the test set


def evaluate_checkpoint(
    path: Path | str,
    data_dir: Path | str | None = None,
    device: str = "auto",
    tta: int | None = None,
    output: Path | str | None = None,
    batch_size: int = 1000,
    amp: str = "off",
) -> tuple[dict, Path]:
    """Evaluate a run directory's (or a checkpoint file's) model on the test set; write JSON.

    `tta=None` uses the test-time augmentation the run was configured with, and `amp="off"`
    (float32) is how training computes its final test figure, so the result matches results.json.
    """
    ckpt = checkpoint_path(path)
    state = load_checkpoint(ckpt)
    if tta is None:
        tta = state.get("config", {}).get("tta", 0)
    model, meta = model_from_checkpoint(state, str(ckpt))
    dev = resolve_device(device)
    data = load_cifar10(data_dir)
    logits = predict_logits(
        model.to(dev, memory_format=memory_format(meta["channels_last"])),
        data.test_images.to(dev),
        meta["mean"],
        meta["std"],
        batch_size=batch_size,
        tta=tta,
        amp=amp,
        channels_last=meta["channels_last"],
    )
    ev = score(logits, data.test_labels.to(dev), len(meta["classes"]))
    result = {
        "checkpoint": str(ckpt),
        "epoch": state.get("epoch"),
        "tta": tta,
        "dtype": autocast_dtype(amp, dev),
        "test_images": len(data.test_labels),
        "test_accuracy": ev.accuracy,
        "test_error": ev.error,
        "test_loss": ev.loss,
        "classes": meta["classes"],
        "per_class_accuracy": dict(zip(meta["classes"], ev.per_class_accuracy())),
        "confusion_matrix": ev.confusion.tolist(),
    }
    output = Path(output) if output else ckpt.parent / EVALUATION
    atomic_write_json(output, result)
    return result, output


def format_evaluation(result: dict) -> str:
    """Headline, per-class table and confusion matrix as terminal text."""
    classes = result["classes"]
    width = max(len(c) for c in classes)
    lines = [
        f"test accuracy {result['test_accuracy']:.2%}  error {result['test_error']:.2%}  "
        f"loss {result['test_loss']:.4f}  ({result['test_images']:,} images, tta={result['tta']})",
        "",
        f"{'class':<{width}}  accuracy",
    ]
    lines += [f"{c:<{width}}  {result['per_class_accuracy'][c]:>8.2%}" for c in classes]
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    lines.append(" " * (width + 1) + "".join(f"{c[:5]:>6}" for c in classes))
    for c, row in zip(classes, result["confusion_matrix"]):
        lines.append(f"{c:<{width}} " + "".join(f"{v:>6}" for v in row))
    return "\n".join(lines)
