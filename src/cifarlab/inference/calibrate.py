"""`cifarlab calibrate RUNDIR`: temperature scaling fitted on the run's validation split, stored with the run.

The validation split is rebuilt exactly as training held it out (`data.split_train_val` with the
run's `val_size` is deterministic), so the temperature is fitted on images the model never trained
on, and never on the test set: the test figures before and after are measured, not fitted. The
temperature is written to RUNDIR/calibration.json, where `predict --calibrated`, `serve
--calibrated`, `evaluate` and the report find it.

The fit uses the logits without test-time augmentation, the logits predict and serve compute.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from cifarlab.common.metrics import calibration_scores, fit_temperature, nll
from cifarlab.common.rundir import CALIBRATION, RunDir
from cifarlab.common.runfiles import TEMPERATURE_RANGE
from cifarlab.data import Cifar10, load_cifar10, split_train_val
from cifarlab.errors import CifarlabError
from cifarlab.inference.model import Predictor, data_dir_for
from cifarlab.training.config import read_run_config

FIT_TTA = 0  # predict and serve compute logits without test-time augmentation


class CalibrateError(CifarlabError):
    """A run that cannot be calibrated; the message is one line."""


def calibrate_run(
    path: Path | str,
    data_dir: Path | str | None = None,
    device: str = "auto",
    batch_size: int = 1000,
    amp: str = "off",
) -> tuple[dict, Path]:
    """Fit a temperature on a run's validation split, write RUNDIR/calibration.json, and return it
    with the test set's NLL, Brier score and ECE before and after scaling."""
    model = Predictor(path, device=device, batch_size=batch_size, amp=amp)
    run = RunDir(model.checkpoint.parent).require()  # the split needs the run's config.json
    val_size = validation_size(run)
    data = load_cifar10(data_dir_for(data_dir, model.checkpoint))
    val_images, val_labels = validation_split(run, data, val_size)
    val_logits = model.logits(val_images, FIT_TTA)
    temperature = fit_temperature(val_logits, val_labels)
    test_logits = model.logits(data.test_images, FIT_TTA)
    record = {
        "temperature": temperature,
        "fitted_on": f"validation split ({len(val_labels):,} images)",
        "epoch": model.epoch,
        "tta": FIT_TTA,
        "val_nll_before": nll(val_logits, val_labels),
        "val_nll_after": nll(val_logits.double() / temperature, val_labels),
        "test_images": len(data.test_labels),
        "test_before": calibration_scores(test_logits, data.test_labels),
        "test_after": calibration_scores(test_logits, data.test_labels, temperature),
    }
    return record, run.write_measured(CALIBRATION, record)


def validation_size(run: RunDir) -> int:
    """The run's val_size; a CalibrateError for a run that held no validation split out."""
    val_size = read_run_config(run.path)["train"].get("val_size") or 0
    if val_size <= 0:
        raise CalibrateError(
            f"{run.path}: trained with val_size 0, so there is no validation split to fit a "
            "temperature on (the test set is never used for fitting); train with --val-size N"
        )
    return val_size


def validation_split(run: RunDir, data: Cifar10, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels training held out for validation, rebuilt from the same data."""
    _, val_idx = split_train_val(data.train_labels, val_size)
    recorded = run.config().get("val_images")
    if recorded is not None and recorded != len(val_idx):  # another data set than the one the run trained on
        raise CalibrateError(
            f"{run.path}: its validation split held {recorded:,} images, this data gives {len(val_idx):,}; pass the --data-dir the run trained on"
        )
    return data.train_images[val_idx], data.train_labels[val_idx]


def format_calibration(record: dict) -> str:
    """The temperature, the validation NLL it lowered, and the test figures before and after."""
    before, after = record["test_before"], record["test_after"]
    lines = [
        f"temperature {record['temperature']:.4f}, fitted on the {record['fitted_on']}, epoch-{record['epoch']} checkpoint, tta={record['tta']}",
        f"validation NLL {record['val_nll_before']:.4f} -> {record['val_nll_after']:.4f}",
    ]
    if at_range_limit(record["temperature"]):
        lines.append(
            f"warning: the temperature is at the end of the range searched {TEMPERATURE_RANGE}: "
            "the model's validation predictions are hardly better than a uniform guess"
        )
    lines += [
        "",
        f"{'test set (' + format(record['test_images'], ',') + ' images)':<27}  {'ECE':>7}  {'NLL':>7}  {'Brier':>7}",
        f"{'before':<27}  {before['ece']:>7.2%}  {before['nll']:>7.4f}  {before['brier']:>7.4f}",
        f"{'after temperature scaling':<27}  {after['ece']:>7.2%}  {after['nll']:>7.4f}  {after['brier']:>7.4f}",
    ]
    return "\n".join(lines)


def at_range_limit(temperature: float) -> bool:
    return any(abs(math.log(temperature / end)) < 1e-6 for end in TEMPERATURE_RANGE)
