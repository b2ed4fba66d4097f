"""Reading a checkpoint file: torch.load with weights_only=True, and the shape of what it holds.

A checkpoint holds only tensors and plain Python values. This module checks what was loaded
(the named weight tensors, the metadata predict/export/serve rely on, the state a resume
restores) without building a model; models/checkpoint.py rebuilds the model it describes.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch

from cifarlab.common.files import RunError, is_number, json_kind
from cifarlab.common.rundir import CHECKPOINT
from cifarlab.common.runfiles import check_history
from cifarlab.text import first_problem

META_KEYS = ("model", "model_options", "classes", "mean", "std")  # what predict/export/serve rely on
PICKLED = "it holds Python objects other than tensors and plain values, which cifarlab never loads (they could run code)"


def checkpoint_path(path: Path | str) -> Path:
    """A checkpoint file given itself or the run directory holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise RunError(f"{path}: no checkpoint there")
    return path


def load_checkpoint(path: Path | str, map_location="cpu") -> dict:
    path = checkpoint_path(path)
    try:
        with warnings.catch_warnings():  # torch warns of a foreign pickle protocol: the one-line error below says it all
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors all mean: not a usable checkpoint
        raise RunError(f"{path}: not a readable cifarlab checkpoint ({_load_problem(e)})") from None
    problem = _checkpoint_problem(state)
    if problem:
        raise RunError(f"{path}: {problem}")
    return state


def _load_problem(error: Exception) -> str:
    """Why torch.load refused a file, in our words: torch's message for a pickle payload advises
    re-running with weights_only=False, which is how to run the payload."""
    if "weights_only" in str(error) or "Weights only load failed" in str(error):
        return PICKLED
    return first_problem(error)


def _checkpoint_problem(state: Any) -> str | None:
    """What makes a loaded object unusable as a checkpoint by predict, export, serve or evaluate."""
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        return "not a cifarlab checkpoint (no model state or metadata)"
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        return f"not a cifarlab checkpoint (its model state should be named tensors, found {json_kind(weights)})"
    for key, kind, name in (("meta", dict, "a table"), ("config", dict, "a table"), ("history", list, "a list"), ("epoch", int, "an integer")):
        if key in state and not isinstance(state[key], kind):
            return f"its {key} should be {name}, found {json_kind(state[key])}"
    return None


def load_training_state(path: Path | str, map_location="cpu") -> dict:
    """A checkpoint with everything a resume restores, its history checked as metrics.jsonl is."""
    state = load_checkpoint(path, map_location)
    path = checkpoint_path(path)
    for key in ("optimizer", "schedule", "rng", "history"):
        if key not in state:
            raise RunError(f"{path}: lacks the {key} state a resume needs (a weights-only checkpoint?)")
    for key in ("optimizer", "schedule", "rng"):
        if not isinstance(state[key], dict):
            raise RunError(f"{path}: its {key} state should be a table, found {json_kind(state[key])}")
    check_history(state["history"], str(path))
    if state.get("epoch") != len(state["history"]):
        raise RunError(f"{path}: says epoch {state.get('epoch')} but holds {len(state['history'])} epochs of history")
    return state


def model_metadata(config: dict, classes, mean, std, train_dtype: str) -> dict:
    """What a checkpoint must carry so that predict/export/serve need nothing else.

    `train_dtype` is the resolved autocast dtype the run trained in ("bfloat16" or "float32");
    inference computes in float32 unless asked otherwise, whatever the run trained in.
    """
    return {
        "model": config["model"],
        "model_options": config["model_options"],
        "classes": list(classes),
        "mean": list(mean),
        "std": list(std),
        "input_size": [3, 32, 32],
        "channels_last": config.get("channels_last", False),
        "train_dtype": train_dtype,
    }


def checked_metadata(meta: Any, source: str) -> dict:
    """The metadata, with channels_last defaulted, or RunError naming the field that is unusable."""
    missing = [k for k in META_KEYS if k not in meta] if isinstance(meta, dict) else list(META_KEYS)
    if missing:
        raise RunError(f"{source}: checkpoint metadata lacks {', '.join(missing)}")
    problem = _metadata_problem(meta)
    if problem:
        raise RunError(f"{source}: checkpoint metadata {problem}")
    return {**meta, "channels_last": meta.get("channels_last", False)}


def _metadata_problem(meta: dict) -> str | None:
    classes, model_options = meta["classes"], meta["model_options"]
    if not isinstance(meta["model"], str):
        return f"model should be a name, found {json_kind(meta['model'])}"
    if not isinstance(model_options, dict) or not all(isinstance(k, str) for k in model_options):
        return f"model_options should be a table of options, found {json_kind(model_options)}"
    if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) and c for c in classes):
        return f"classes should be a list of class names, found {json_kind(classes)}"
    if len(set(classes)) != len(classes):
        return "classes names a class twice"
    for key in ("mean", "std"):
        values = meta[key]
        if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(is_number(v) and math.isfinite(v) for v in values):
            return f"{key} should be 3 numbers (one per colour channel), found {values!r:.60}"
    if not all(v > 0 for v in meta["std"]):
        return f"std should be 3 positive numbers (inputs are divided by it), found {meta['std']!r}"
    if not isinstance(meta.get("channels_last", False), bool):
        return f"channels_last should be true/false, found {json_kind(meta['channels_last'])}"
    return None
