"""`cifarlab info`: what this machine, torch and the data look like to cifarlab."""

from __future__ import annotations

from pathlib import Path

import torch

from cifarlab.data import DataError, default_data_dir, find_dataset, load_cifar10
from cifarlab.data.download import unreadable_folder
from cifarlab.models import count_parameters, list_models
from cifarlab.models.measure import build_on_meta
from cifarlab.runtime import autocast_dtype, native_bf16, resolve_device, set_cpu_threads
from cifarlab.training.presets import PRESETS


def data_status(data_dir: Path | None) -> dict:
    """Where the data would be read from and whether it reads and verifies (no download)."""
    root = Path(data_dir) if data_dir else default_data_dir()
    problem = unreadable_folder(root)
    if problem:
        return {"location": str(root), "status": f"{problem}: check its permissions (nothing is downloaded into it)"}
    try:
        found = find_dataset(root)
    except DataError as e:
        return {"location": str(root), "status": f"unusable: {e}"}
    if found is None:
        return {"location": str(root), "status": "not found (it is downloaded on first use)"}
    try:
        data = load_cifar10(root, download=False)
    except DataError as e:
        return {"location": str(found), "status": f"invalid: {e}"}
    return {"location": str(found), "status": f"ok, {len(data.train_labels):,} training and {len(data.test_labels):,} test images"}


def amp_auto(device: torch.device) -> dict:
    """The dtype `amp: auto` trains in on this device, and why (the presets' default setting)."""
    dtype = autocast_dtype("auto", device)
    where = "this GPU" if device.type == "cuda" else "this CPU"
    why = f"{where} computes bfloat16 natively" if native_bf16(device) else f"{where} has no native bfloat16 (emulated, it would be slower)"
    return {"dtype": dtype, "reason": why}


def gather_info(data_dir: Path | None = None) -> dict:
    device = resolve_device("auto")
    return {
        "torch_version": torch.__version__,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": set_cpu_threads(),
        "amp_auto": amp_auto(device),
        "data": data_status(data_dir),
        "models": {name: count_parameters(build_on_meta(name)) for name in list_models()},
        "presets": list(PRESETS),
    }
