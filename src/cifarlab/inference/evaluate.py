"""`cifarlab evaluate`: a saved model on the test set: accuracy, per-class accuracy, confusion matrix,
and calibration (NLL, Brier score, ECE), also after temperature scaling when the run has been calibrated.

evaluation.json holds one evaluation, the latest. Replacing one made with other settings (another
TTA, dtype or checkpoint epoch) is said, never silent. `evaluate --corruptions` (or --cifar101-dir)
measures robustness only and writes robustness.json alone, which holds its own clean accuracy on
the same images, TTA and dtype: a cheap `--tta 0` robustness pass leaves the full evaluation as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from cifarlab.common import runfiles
from cifarlab.common.files import RunError, read_json
from cifarlab.common.metrics import CALIBRATION_BINS, calibration_scores, score
from cifarlab.common.rundir import CALIBRATION, EVALUATION, RunDir
from cifarlab.data import load_cifar10
from cifarlab.errors import CifarlabError
from cifarlab.inference.model import Predictor, data_dir_for, stored_temperature
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
    log: Callable[[str], None] = lambda s: None,
) -> tuple[dict, Path]:
    """Evaluate a run directory's (or a checkpoint file's, or an export folder's) model on the test set; write JSON.

    The JSON goes beside the model by default: RUNDIR/evaluation.json, or EXPORT/evaluation.json for
    an exported folder, which is that model's home as a run directory is a checkpoint's (and which
    an export written over it then replaces along with the weights it measured).
    `tta=None` uses the test-time augmentation the run was configured with, and `amp="off"`
    (float32) is how training computes its final test figure, so the result matches results.json.
    `log` hears when the file replaces an evaluation made with other settings.
    """
    model = Predictor(path, device=device, batch_size=batch_size, amp=amp)
    tta = model.trained_tta if tta is None else tta
    data = load_cifar10(data_dir_for(data_dir, model.checkpoint))
    logits = model.logits(data.test_images, tta)
    ev = score(logits, data.test_labels, len(model.classes))
    test_calibration = calibration_scores(logits, data.test_labels)
    result = {
        "checkpoint": str(model.checkpoint),
        "epoch": model.epoch,
        "tta": tta,
        "dtype": autocast_dtype(amp, model.device),
        "test_images": len(data.test_labels),
        "test_accuracy": ev.accuracy,
        "test_error": ev.error,
        "test_loss": ev.loss,
        "test_nll": test_calibration["nll"],
        "test_brier": test_calibration["brier"],
        "test_ece": test_calibration["ece"],
        **temperature_scaled(model, logits, data.test_labels),
        "classes": model.classes,
        "per_class_accuracy": dict(zip(model.classes, ev.per_class_accuracy())),
        "confusion_matrix": ev.confusion.tolist(),
    }
    output = Path(output) if output else model.checkpoint.parent / EVALUATION
    earlier = earlier_settings(output)
    if earlier is not None and earlier != settings(result):
        log(f"{output}: replaces an evaluation made with {earlier}")
    runfiles.write(runfiles.Evaluation, output, result)
    return result, output


def settings(result: dict) -> str:
    """What makes two evaluations of a model differ: its checkpoint's epoch, the TTA and the dtype."""
    return f"tta={result.get('tta')}, {result.get('dtype')}, the epoch-{result.get('epoch')} checkpoint"


def earlier_settings(output: Path) -> str | None:
    """The settings of the evaluation already at `output`, or None when there is none."""
    if not output.is_file():
        return None
    try:
        earlier = read_json(output)
    except RunError:
        return "unknown settings (the file was unreadable)"
    return settings(earlier) if isinstance(earlier, dict) else "unknown settings (the file held no object)"


def temperature_scaled(model: Predictor, logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """{"temperature_scaled": test NLL, Brier and ECE of logits / T} for a calibrated run, {} for one
    never calibrated, and {"calibration_problem": why} when its calibration.json cannot be used."""
    if not RunDir(model.checkpoint.parent).file(CALIBRATION).exists():
        return {}
    try:
        temperature = stored_temperature(model.checkpoint, model.epoch)
    except RunError as e:  # stale or damaged: say so, but the evaluation itself stands
        return {"calibration_problem": str(e)}
    return {"temperature_scaled": {"temperature": temperature, **calibration_scores(logits, labels, temperature)}}


def format_evaluation(result: dict) -> str:
    """Headline, per-class table and confusion matrix as terminal text."""
    classes = result["classes"]
    width = max(len(c) for c in classes)
    lines = [
        f"test accuracy {result['test_accuracy']:.2%}  error {result['test_error']:.2%}  "
        f"loss {result['test_loss']:.4f}  ({result['test_images']:,} images, tta={result['tta']})",
        "",
        *format_calibration_lines(result),
        "",
        f"{'class':<{width}}  accuracy",
    ]
    lines += [f"{c:<{width}}  {result['per_class_accuracy'][c]:>8.2%}" for c in classes]
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    lines.append(" " * (width + 1) + "".join(f"{c[:5]:>6}" for c in classes))
    for c, row in zip(classes, result["confusion_matrix"]):
        lines.append(f"{c:<{width}} " + "".join(f"{v:>6}" for v in row))
    return "\n".join(lines)


def format_calibration_lines(result: dict) -> list[str]:
    """ECE, NLL and Brier score, and the same after temperature scaling when the run has it."""
    lines = [
        f"calibration ({CALIBRATION_BINS}-bin ECE)  ECE {result['test_ece']:.2%}  NLL {result['test_nll']:.4f}  Brier {result['test_brier']:.4f}"
    ]
    scaled = result.get("temperature_scaled")
    if scaled:
        lines.append(
            f"after temperature scaling (T={scaled['temperature']:.3f}, from {CALIBRATION})  ECE {scaled['ece']:.2%}  "
            f"NLL {scaled['nll']:.4f}  Brier {scaled['brier']:.4f}"
        )
    if result.get("calibration_problem"):
        lines.append(f"no temperature scaling: {result['calibration_problem']}")
    return lines
