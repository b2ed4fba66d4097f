"""Logits (with optional test-time augmentation) and their scores: loss, accuracy, confusion matrix,
and how well their probabilities are calibrated (NLL, Brier score, ECE; temperature scaling).

The one function every path from images to logits goes through: training's validation and test
evaluation, `cifarlab evaluate`, predict, serve, the report and the export check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.common.runfiles import TEMPERATURE_RANGE
from cifarlab.data.augment import normalize
from cifarlab.runtime import autocast, memory_format, use_amp


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


# ---------------------------------------------------------------- calibration

CALIBRATION_BINS = 15  # equal-width confidence bins of the ECE and the reliability diagram


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class (the cross-entropy loss), in float64."""
    return F.cross_entropy(logits.double(), labels.to(logits.device)).item()


def brier(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Brier score: the mean over images of the summed squared differences between the predicted
    probabilities and the one-hot true class (0 is perfect, 2 the worst)."""
    probs = F.softmax(logits.double(), dim=1)
    onehot = F.one_hot(labels.to(logits.device), probs.shape[1]).double()
    return ((probs - onehot) ** 2).sum(1).mean().item()


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> dict:
    """Accuracy and mean confidence per equal-width confidence bin, and the expected calibration error.

    ECE = sum over bins of (bin size / N) * |accuracy(bin) - mean confidence(bin)|. Bins are (lo, hi];
    the first also holds a confidence of exactly 0. Returns CPU tensors: edges (bins + 1), counts,
    accuracy, confidence (bins each; 0 in empty bins), and ece as a float.
    """
    confidence, predicted = probs.double().cpu().max(1)
    correct = (predicted == labels.cpu()).double()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    which = torch.bucketize(confidence, edges[1:-1])  # i with edges[i] < c <= edges[i + 1]
    counts = torch.bincount(which, minlength=bins)
    accuracy = torch.bincount(which, weights=correct, minlength=bins) / counts.clamp(min=1)
    mean_confidence = torch.bincount(which, weights=confidence, minlength=bins) / counts.clamp(min=1)
    ece = (counts / max(1, len(labels)) * (accuracy - mean_confidence).abs()).sum().item()
    return {"edges": edges, "counts": counts, "accuracy": accuracy, "confidence": mean_confidence, "ece": ece}


def ece(logits: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error of the logits' softmax over `bins` equal-width confidence bins."""
    return reliability(F.softmax(logits.double(), dim=1), labels, bins)["ece"]


def calibration_scores(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict[str, float]:
    """NLL, Brier score and ECE of logits / temperature."""
    scaled = logits.double() / temperature
    return {"nll": nll(scaled, labels), "brier": brier(scaled, labels), "ece": ece(scaled, labels)}


_GOLDEN = (math.sqrt(5) - 1) / 2


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 80) -> float:
    """The temperature T in TEMPERATURE_RANGE minimising the NLL of logits / T (temperature scaling).

    A golden-section search on log T. The NLL is convex in 1/T (a log-sum-exp of functions linear
    in it, less a linear one), so along log T it has a single minimum and a bracketing search
    finds it with no learning rate or starting point to tune, and the same logits always give the
    same T. 80 steps shrink the bracket by 0.618^80, far below float64's resolution of the NLL.
    """
    z, y = logits.double(), labels.to(logits.device)

    def loss(log_t: float) -> float:
        return F.cross_entropy(z / math.exp(log_t), y).item()

    lo, hi = (math.log(t) for t in TEMPERATURE_RANGE)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(steps):
        if loss_a <= loss_b:  # the minimum lies in [lo, b]
            hi, b, loss_b = b, a, loss_a
            a = hi - _GOLDEN * (hi - lo)
            loss_a = loss(a)
        else:  # in [a, hi]
            lo, a, loss_a = a, b, loss_b
            b = lo + _GOLDEN * (hi - lo)
            loss_b = loss(b)
    return math.exp((lo + hi) / 2)
