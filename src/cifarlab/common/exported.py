"""A model exported to travel: a folder with model.safetensors, config.json and a model card.

The folder is read back into the same (weights, metadata) state a checkpoint gives, so that
`model_from_checkpoint` validates it and `Predictor` (hence predict, evaluate and serve) takes
an exported folder wherever it takes a run. `model_file` and `load_model_state` are the two
entry points: they accept a run directory, a checkpoint file, an exported folder or its
model.safetensors.

safetensors holds only named tensors (no pickle, no code), so an export from anyone is safe to
load. config.json records the weights' SHA-256: weights that were corrupted, or replaced by
another model's, are a one-line RunError rather than a model that quietly answers wrongly.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cifarlab.common import runfiles
from cifarlab.common.checkpoint import (
    checked_metadata,
    checkpoint_path,
    load_checkpoint,
)
from cifarlab.common.files import RunError, atomic_write_bytes, read_json
from cifarlab.common.rundir import CHECKPOINT, EXPORT_CONFIG, EXPORT_WEIGHTS
from cifarlab.text import first_problem

FORMAT, FORMAT_VERSION = "cifarlab-safetensors", 1
SUFFIX = ".safetensors"
# config.json's fields that make a checkpoint's metadata (common/checkpoint.model_metadata writes the same ones)
MODEL_FIELDS = ("model", "model_options", "classes", "mean", "std", "input_size", "channels_last", "train_dtype")


def _safetensors():
    """The safetensors.torch module; it is the `safetensors` extra, not a core dependency."""
    try:
        import safetensors.torch
    except ImportError:
        raise RunError("safetensors is not installed: pip install 'cifarlab[safetensors]'") from None
    return safetensors.torch


def is_export(path: Path | str) -> bool:
    """Whether `path` is an exported folder or the weights file of one."""
    path = Path(path)
    return (path / EXPORT_WEIGHTS).is_file() if path.is_dir() else path.suffix == SUFFIX


def model_file(path: Path | str) -> Path:
    """The file holding the weights: an export's model.safetensors, else the run's checkpoint."""
    path = Path(path)
    if path.is_dir() and not (path / CHECKPOINT).exists() and not is_export(path):
        raise RunError(f"{path}: no checkpoint there (neither a run's {CHECKPOINT} nor an export's {EXPORT_WEIGHTS})")
    if not is_export(path):
        return checkpoint_path(path)
    weights = path / EXPORT_WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise RunError(f"{weights}: no such file")
    return weights


def load_model_state(path: Path | str) -> dict:
    """A checkpoint's state, or an export's read into the same shape (weights, meta, epoch, config)."""
    weights = model_file(path)
    return read_export(weights.parent) if weights.suffix == SUFFIX else load_checkpoint(weights)


# ---------------------------------------------------------------- writing


def float32_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights as safetensors stores them: contiguous, each in its own memory (it refuses shared
    storage), floating point as float32; integer buffers (BatchNorm's batch count) keep their type."""
    return {name: (t.float() if t.is_floating_point() else t).detach().cpu().contiguous().clone() for name, t in state_dict.items()}


def write_export(folder: Path, state_dict: dict[str, torch.Tensor], config: dict) -> dict:
    """Write model.safetensors and config.json into `folder`; returns config.json's contents."""
    data = _safetensors().save(float32_state(state_dict), metadata={"format": "pt"})
    atomic_write_bytes(folder / EXPORT_WEIGHTS, data)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **config,
        "weights": {"file": EXPORT_WEIGHTS, "sha256": hashlib.sha256(data).hexdigest(), "dtype": "float32"},
    }
    runfiles.write(runfiles.ExportConfig, folder / EXPORT_CONFIG, config)
    return config


# ---------------------------------------------------------------- reading


def read_export(folder: Path | str) -> dict:
    """An exported folder as a checkpoint-shaped state; RunError naming the file for anything unusable."""
    folder = Path(folder)
    config = read_export_config(folder)
    weights_path = folder / EXPORT_WEIGHTS
    try:
        data = weights_path.read_bytes()
    except OSError as e:
        raise RunError(f"{weights_path}: cannot be read ({e.strerror})") from None
    expected = config["weights"]["sha256"]
    if hashlib.sha256(data).hexdigest() != expected:
        raise RunError(f"{weights_path}: does not match {EXPORT_CONFIG} (its SHA-256 differs: corrupted, or another model's weights)")
    try:
        tensors = _safetensors().load(data)
    except Exception as e:  # safetensors' own error type, or a Rust panic: either way not usable
        raise RunError(f"{weights_path}: not a readable safetensors file ({first_problem(e)})") from None
    meta = {key: config[key] for key in MODEL_FIELDS if key in config}
    return {"model": tensors, "meta": meta, "epoch": config.get("epoch"), "config": config.get("recipe") or {}}


def check_weight_dtypes(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: Path | str, exact: bool = True) -> None:
    """RunError naming the first tensor whose dtype is not the one the model holds it in.

    Loading copies (and casts) each tensor into the model, so a header relabelled from F32 to I32
    over float32 bytes would load as huge integers and answer one class for everything. An export
    stores exactly the model's dtypes (`exact`); a checkpoint may hold another float type (a
    bfloat16 run), never an integer where the model has floats or the reverse.
    """
    for name, tensor in tensors.items():
        wanted = expected.get(name)
        if wanted is None or tensor.dtype == wanted.dtype:
            continue
        if exact or tensor.is_floating_point() != wanted.is_floating_point() or tensor.is_complex() != wanted.is_complex():
            raise RunError(
                f"{source}: tensor {name[:80]!r} is {str(tensor.dtype).removeprefix('torch.')}, "
                f"the model holds it as {str(wanted.dtype).removeprefix('torch.')} (a relabelled or foreign file)"
            )


def read_export_config(folder: Path) -> dict:
    """config.json of an export through its schema, and the model's metadata checked as a
    checkpoint's is (so that errors name config.json, not the weights)."""
    path = folder / EXPORT_CONFIG
    config = read_json(path)
    if config.get("format") != FORMAT:
        raise RunError(f"{path}: not a cifarlab model export (format should be {FORMAT!r}, found {config.get('format')!r:.40})")
    version = config.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise RunError(f"{path}: format version {version} is newer than this cifarlab reads ({FORMAT_VERSION}); upgrade cifarlab")
    runfiles.check(runfiles.ExportConfig, config, str(path))
    checked_metadata({key: config[key] for key in MODEL_FIELDS if key in config}, str(path))
    return config
