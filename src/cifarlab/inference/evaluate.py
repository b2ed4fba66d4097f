"""`cifarlab evaluate`: a saved model on the test set: accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

from pathlib import Path

from cifarlab.common.metrics import score
from cifarlab.common.rundir import EVALUATION, atomic_write_json
from cifarlab.data import load_cifar10
from cifarlab.errors import CifarlabError
from cifarlab.inference.model import Predictor
from cifarlab.runtime import autocast_dtype


class EvaluateError(CifarlabError):
    """Bad arguments to an evaluation; the message is one line."""


def evaluate_checkpoint(
    path: Path | str,
    data_dir: Path | str | None = None,
    device: str = "auto",
    tta: int | None = None,
    output: Path | str | None = None,
    batch_size: int = 1000,
    amp: str = "off",
) -> tuple[dict, Path]:
    """Evaluate a run directory's (or a checkpoint file's, or an export folder's) model on the test set; write JSON.

    The JSON goes beside the model by default: RUNDIR/evaluation.json, or EXPORT/evaluation.json for
    an exported folder, which is that model's home as a run directory is a checkpoint's (and which
    an export written over it then replaces along with the weights it measured).
    `tta=None` uses the test-time augmentation the run was configured with, and `amp="off"`
    (float32) is how training computes its final test figure, so the result matches results.json.
    """
    model = Predictor(path, device=device, batch_size=batch_size, amp=amp)
    tta = model.trained_tta if tta is None else tta
    data = load_cifar10(data_dir)
    ev = score(model.logits(data.test_images, tta), data.test_labels, len(model.classes))
    result = {
        "checkpoint": str(model.checkpoint),
        "epoch": model.epoch,
        "tta": tta,
        "dtype": autocast_dtype(amp, model.device),
        "test_images": len(data.test_labels),
        "test_accuracy": ev.accuracy,
        "test_error": ev.error,
        "test_loss": ev.loss,
        "classes": model.classes,
        "per_class_accuracy": dict(zip(model.classes, ev.per_class_accuracy())),
        "confusion_matrix": ev.confusion.tolist(),
    }
    output = Path(output) if output else model.checkpoint.parent / EVALUATION
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
