"""What results.json holds about a finished training: its accuracy, its speed and where the
seconds went, gathered from the epochs' history and the final test evaluation."""

from __future__ import annotations

import torch

from cifarlab.common import distributed
from cifarlab.common.rundir import seconds_to_stabilise
from cifarlab.runtime import machine_facts
from cifarlab.training.config import TrainConfig
from cifarlab.training.learner import Splits


def time_split(history: list[dict], setup: float, test_eval: float, wall: float) -> dict:
    """Where the seconds went. Records (airbench) time training plus the final TTA evaluation and
    leave out warm-up; here every part is apart, so any such sum can be made from them. For a
    resumed run, setup and wall clock are those of the process that finished it."""
    training = sum(h["train_seconds"] for h in history)
    return {
        "setup_seconds": setup,
        "training_seconds": training,
        "validation_seconds": sum(h["epoch_seconds"] for h in history) - training,
        "test_evaluation_seconds": test_eval,
        "training_plus_test_evaluation_seconds": training + test_eval,
        "wall_seconds": wall,
    }


def results_record(history: list[dict], test, splits: Splits, config: TrainConfig, params: int, dev: torch.device) -> dict:
    """results.json's record of a finished training (the caller adds the test evaluation's
    settings, the stop and the timing)."""
    stable_epoch, stable_seconds = seconds_to_stabilise(history)
    train_time = sum(h["train_seconds"] for h in history)
    steps = sum(h["steps"] for h in history)
    vals = [h["val_accuracy"] for h in history if h["val_accuracy"] is not None]
    return {
        "preset": config.preset,
        "model": config.model,
        "test_accuracy": test.accuracy,
        "test_error": test.error,
        "test_loss": test.loss,
        "tta": config.tta,
        "per_class_accuracy": dict(zip(splits.classes, test.per_class_accuracy())),
        "params": params,
        "epochs": len(history),
        "final_val_accuracy": vals[-1] if vals else None,
        "best_val_accuracy": max(vals) if vals else None,
        "seconds_per_step": train_time / max(1, steps),
        "seconds_per_epoch": history[-1]["elapsed_seconds"] / len(history),
        "stabilised_epoch": stable_epoch,
        "seconds_to_stabilise": stable_seconds,
        "train_seconds": history[-1]["elapsed_seconds"],
        **machine_facts(dev),
        "world_size": distributed.world_size(),
    }
