"""Export a checkpoint's model to ONNX or TorchScript, checked against PyTorch before it is kept.

The exported graph takes normalised float32 images (N, 3, 32, 32), RGB, any batch size N,
and returns float32 logits (N, classes). How to get from pixels to that input is written
in a JSON file beside the model (`MODEL.json`, e.g. `model.onnx.json`).

ONNX goes through torch's default exporter since 2.9, the torch.export-based ("dynamo")
one, which needs the `onnxscript` package (in the `export` extra). The older
TorchScript-based exporter still works but is deprecated, so it is not used.

Nothing is kept unless the exported model, loaded back fresh (onnxruntime or
torch.jit.load), gives the same logits as the PyTorch model within `tolerance` on a batch
of real test images (random images, with a warning, when no data set is found), at
several batch sizes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from cifarlab.common.rundir import (
    RunDir,
    RunError,
    atomic_write_json,
)
from cifarlab.data import DataError, load_cifar10
from cifarlab.data.augment import normalize
from cifarlab.errors import CifarlabError
from cifarlab.inference.model import Predictor

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
TOLERANCE = 1e-4  # max absolute difference in logits
CHECK_IMAGES = 256
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class ExportError(CifarlabError):
    """An export that could not be made or did not match PyTorch; the message is one line."""


def check_images(data_dir: Path | str | None, count: int, log: Callable[[str], None]) -> tuple[torch.Tensor, str]:
    """uint8 images to check an export on: the test set's first `count`, else random ones."""
    try:
        data = load_cifar10(data_dir, download=False)
        return data.test_images[:count], f"CIFAR-10 test set, first {min(count, len(data.test_images))}"
    except DataError as e:
        log(f"warning: checking the export on {count} random images, not real ones ({e})")
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator), "random uint8, no data set found"


def run_data_dir(ckpt: Path) -> Path | None:
    """The data set a checkpoint's run trained on (config.json records its folder or archive), if still there."""
    run = RunDir(ckpt.parent)
    if not run.exists():
        return None
    try:
        data = run.config().get("data")
    except RunError:
        return None
    # The recorded folder or archive itself, not its parent: find_dataset takes either, and parquet
    # files may lie in the data folder's root, whose parent holds no data set.
    return Path(data) if isinstance(data, str) and Path(data).exists() else None


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters' deprecation and 'torchvision not installed' chatter is not the user's concern."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("onnxruntime is not installed: pip install 'cifarlab[export]'") from None
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                verbose=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
            )
            program.save(path, external_data=False)
    except ImportError as e:
        raise ExportError(f"the ONNX exporter needs a package that is missing ({e}): pip install 'cifarlab[export]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    with _quiet_exporter(), torch.no_grad():
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return loaded(torch.from_numpy(x)).numpy()

    return run


def compare(run: Callable[[np.ndarray], np.ndarray], reference: np.ndarray, x: torch.Tensor) -> dict:
    """Max abs logit difference and top-1 agreement of an exported model against `reference`
    logits, over the whole batch, a single image and an odd-sized batch (the batch axis is dynamic)."""
    batch_sizes = sorted({len(x), 1, min(len(x), 7)}, reverse=True)
    diff, agree = 0.0, 0
    for n in batch_sizes:
        out = np.asarray(run(x[:n].numpy().copy()))
        if out.shape != reference[:n].shape:
            raise ExportError(f"exported model returned shape {list(out.shape)} for a batch of {n}, expected {list(reference[:n].shape)}")
        diff = max(diff, float(np.abs(out - reference[:n]).max()))
        if n == len(x):
            agree = int((out.argmax(1) == reference.argmax(1)).sum())
    return {"batch_sizes": batch_sizes, "max_abs_diff": diff, "top1_agreement": agree / len(x)}


def export_model(
    run: Path | str,
    fmt: str = "onnx",
    output: Path | str | None = None,
    data_dir: Path | str | None = None,
    tolerance: float = TOLERANCE,
    images: int = CHECK_IMAGES,
    log: Callable[[str], None] = print,
) -> tuple[Path, dict]:
    """Export the model of a run directory (or checkpoint) and write its preprocessing JSON.

    Returns the model file and the JSON's contents. Raises ExportError, and keeps nothing,
    when the export does not reproduce PyTorch's logits within `tolerance`.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if images < 1:
        raise ExportError("--check-images must be at least 1")
    predictor = Predictor(run, device="cpu")
    ckpt, meta = predictor.checkpoint, predictor.meta
    output = Path(output) if output else ckpt.parent / FORMATS[fmt]
    if not output.parent.is_dir():
        raise ExportError(f"{output.parent}: no such folder for the exported model")

    pixels, source = check_images(data_dir if data_dir is not None else run_data_dir(ckpt), images, log)
    x = normalize(pixels, meta["mean"], meta["std"])
    reference = predictor.logits(pixels).numpy()  # exactly what `cifarlab predict` computes
    # Exported graphs are float32 and contiguous, in eval mode (dropout off, BatchNorm running stats).
    model = predictor.model.float().to("cpu", memory_format=torch.contiguous_format).eval()
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        runner = (_export_onnx if fmt == "onnx" else _export_torchscript)(model, x[:2], tmp)
        check = compare(runner, reference, x)
        if not check["max_abs_diff"] <= tolerance:
            raise ExportError(
                f"the {fmt} model differs from PyTorch by up to {check['max_abs_diff']:.3g} in the logits "
                f"(tolerance {tolerance:g}); nothing was written"
            )
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)

    info = describe(fmt, output, ckpt, meta, {"against": "cifarlab predict (PyTorch eager, float32, CPU)", "images": source,
                                              "count": len(x), "tolerance": tolerance, **check})
    atomic_write_json(sidecar(output), info)
    return output, info


def sidecar(model_file: Path) -> Path:
    return model_file.with_name(model_file.name + ".json")


def describe(fmt: str, output: Path, ckpt: Path, meta: dict, check: dict) -> dict:
    """Everything a user of the exported file needs to feed it and read its answer."""
    classes = list(meta["classes"])
    info = {
        "format": fmt,
        "file": output.name,
        "checkpoint": str(ckpt),
        "model": meta["model"],
        "model_options": meta["model_options"],
        "input": {"name": INPUT_NAME, "shape": ["N", 3, 32, 32], "dtype": "float32", "layout": "NCHW",
                  "channel_order": "RGB", "batch_axis": "dynamic"},
        "output": {"name": OUTPUT_NAME, "shape": ["N", len(classes)], "dtype": "float32",
                   "meaning": "logits; softmax over axis 1 gives class probabilities"},
        "preprocessing": {
            "pixel_scale": "divide uint8 pixels by 255",
            "mean": list(meta["mean"]),
            "std": list(meta["std"]),
            "formula": "input[c] = (pixels[c] / 255 - mean[c]) / std[c]",
            "resize": "other sizes: largest central square, then Pillow bicubic to 32x32 (as cifarlab predict)",
        },
        "classes": classes,
        "check": check,
        "torch_version": torch.__version__,
    }
    if fmt == "onnx":
        import onnx
        import onnxruntime

        opsets = {o.domain or "ai.onnx": o.version for o in onnx.load(str(output), load_external_data=False).opset_import}
        info["onnx_opset"] = opsets.get("ai.onnx")
        info["onnxruntime_version"] = onnxruntime.__version__
    return info
