"""A checkpoint's (or an exported folder's) model rebuilt: the network its metadata names, its
weights loaded, one forward pass to check the outputs; and a warm start's weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cifarlab.common.checkpoint import checked_metadata
from cifarlab.common.exported import load_model_state, model_file
from cifarlab.common.files import RunError
from cifarlab.models.registry import build_model
from cifarlab.text import first_problem


def model_from_checkpoint(state: dict, source: str = "checkpoint") -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint describes and load its weights; one-line errors for metadata
    that predict, export or serve could not use (rather than an IndexError or NaN output later)."""
    meta = checked_metadata(state["meta"], source)
    try:
        model = build_model(meta["model"], **meta["model_options"])
        model.load_state_dict(state["model"])
        model.eval()
        outputs = output_count(model, meta.get("input_size", [3, 32, 32]))
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:  # a builder or forward pass the metadata breaks
        raise RunError(f"{source}: cannot rebuild model {meta.get('model')!r}: {first_problem(e)}") from None
    if outputs != len(meta["classes"]):
        raise RunError(f"{source}: checkpoint metadata names {len(meta['classes'])} classes but the model has {outputs} outputs")
    return model, meta


def output_count(model: nn.Module, input_size: Any) -> int:
    """How many logits the model gives per image (one forward pass of a blank image)."""
    if not (isinstance(input_size, (list, tuple)) and len(input_size) == 3 and all(isinstance(n, int) and n > 0 for n in input_size)):
        raise ValueError(f"input_size should be 3 positive integers, found {input_size!r:.60}")
    with torch.no_grad():
        logits = model(torch.zeros(1, *input_size))
    if logits.dim() != 2:
        raise ValueError(f"the model gives outputs of shape {tuple(logits.shape)}, not one row of logits per image")
    return logits.shape[1]


def load_initial_weights(model: nn.Module, source: Path | str) -> dict:
    """Load the weights (only) of a run's checkpoint, or of an exported safetensors folder, into
    `model` for a warm start; returns what config.json records about the source. One-line errors
    when the shapes do not fit."""
    weights = model_file(source)
    state = load_model_state(source)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise RunError(f"--init-from {weights}: its weights do not fit this model: {first_problem(e)}") from None
    return {"checkpoint": str(weights.resolve()), "epoch": state.get("epoch"), "model": state["meta"].get("model")}
