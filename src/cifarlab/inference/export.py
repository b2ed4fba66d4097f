"""Export a checkpoint's model to ONNX, TorchScript or a safetensors folder, checked before it is kept.

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

`--format safetensors` writes a folder instead (default RUNDIR/safetensors/): the weights as
model.safetensors, config.json (what rebuilds and feeds the model, common/exported.py) and a model
card, README.md (inference/card.py). cifarlab reads that folder wherever it reads a run, so it is
checked by loading it back through `Predictor` and asking for logits identical to the run's, bit
for bit: the same weights in the same code can give nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cifarlab import __version__
from cifarlab.common.exported import read_export_config, write_export
from cifarlab.common.files import RunError, atomic_write_bytes, atomic_write_json, temporary_for, writing
from cifarlab.common.rundir import EVALUATION, EXPORT_CARD, EXPORT_CONFIG, EXPORT_DIR, EXPORT_WEIGHTS
from cifarlab.data import DataError, load_cifar10
from cifarlab.data.augment import normalize
from cifarlab.errors import CifarlabError
from cifarlab.inference.card import model_card, run_measurements
from cifarlab.inference.model import Predictor, data_dir_for

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "safetensors": EXPORT_DIR}
FOLDER_FORMATS = ("safetensors",)  # written as a folder of files, not one model file
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
            assert program is not None  # None only without dynamo=True
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
    if fmt in FOLDER_FORMATS:
        return export_safetensors(run, output, data_dir, images, log)
    predictor = Predictor(run, device="cpu")
    ckpt, meta = predictor.checkpoint, predictor.meta
    output = Path(output) if output else ckpt.parent / FORMATS[fmt]
    if not output.parent.is_dir():
        raise ExportError(f"{output.parent}: no such folder for the exported model")

    pixels, source = check_images(data_dir_for(data_dir, ckpt), images, log)
    x = normalize(pixels, meta["mean"], meta["std"])
    reference = predictor.logits(pixels).numpy()  # exactly what `cifarlab predict` computes
    # Exported graphs are float32 and contiguous, in eval mode (dropout off, BatchNorm running stats).
    model = predictor.model.float().to("cpu", memory_format=torch.contiguous_format).eval()
    with temporary_for(output) as tmp:
        with writing(output):  # the exporter writes the file itself: a full disk is a one-line error naming it
            runner = (_export_onnx if fmt == "onnx" else _export_torchscript)(model, x[:2], tmp)
        check = compare(runner, reference, x)
        if not check["max_abs_diff"] <= tolerance:
            raise ExportError(
                f"the {fmt} model differs from PyTorch by up to {check['max_abs_diff']:.3g} in the logits "
                f"(tolerance {tolerance:g}); nothing was written"
            )
        with writing(output):
            os.replace(tmp, output)

    info = describe(
        fmt,
        output,
        ckpt,
        meta,
        {"against": "cifarlab predict (PyTorch eager, float32, CPU)", "images": source, "count": len(x), "tolerance": tolerance, **check},
    )
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
        "input": {
            "name": INPUT_NAME,
            "shape": ["N", 3, 32, 32],
            "dtype": "float32",
            "layout": "NCHW",
            "channel_order": "RGB",
            "batch_axis": "dynamic",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["N", len(classes)],
            "dtype": "float32",
            "meaning": "logits; softmax over axis 1 gives class probabilities",
        },
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


# ---------------------------------------------------------------- safetensors folder


def export_safetensors(
    run: Path | str,
    output: Path | str | None = None,
    data_dir: Path | str | None = None,
    images: int = CHECK_IMAGES,
    log: Callable[[str], None] = print,
) -> tuple[Path, dict]:
    """Write a run's model as a folder (model.safetensors, config.json, README.md) and check it.

    The folder is built beside its destination and moved into place only when, loaded back, it
    gives logits identical to the run's; an earlier export there is replaced, anything else refused.
    Returns the folder and what `cifarlab export` reports.
    """
    predictor = Predictor(run, device="cpu")
    ckpt = predictor.checkpoint
    output = Path(output) if output else ckpt.parent / EXPORT_DIR
    check_export_folder(output)
    pixels, source = check_images(data_dir_for(data_dir, ckpt), images, log)
    reference = predictor.logits(pixels)  # exactly what `cifarlab predict` computes from the run
    with temporary_for(output, folder=True) as staging:
        config = _write_folder(staging, predictor)
        exported = Predictor(staging, device="cpu").logits(pixels)
        if not torch.equal(exported, reference):
            diff = float((exported - reference).abs().max())
            raise ExportError(f"the exported folder's logits differ from the run's by up to {diff:.3g}; nothing was written")
        with writing(output):
            _replace_folder(staging, output)
    check = {"against": "cifarlab predict on the run (PyTorch eager, float32, CPU)", "images": source, "count": len(pixels), "identical": True}
    return output, {**config, "file": output.name, "check": check}


def _write_folder(folder: Path, predictor: Predictor) -> dict:
    """The three files of an export; returns config.json's contents."""
    state, meta = predictor.state, predictor.meta
    model = predictor.model.float().to("cpu", memory_format=torch.contiguous_format)
    config = write_export(
        folder,
        model.state_dict(),
        {
            **{key: meta[key] for key in ("model", "model_options", "classes", "mean", "std")},
            "input_size": meta.get("input_size", [3, 32, 32]),
            "channels_last": meta["channels_last"],
            "train_dtype": meta.get("train_dtype", "float32"),
            "epoch": state.get("epoch"),
            "recipe": state.get("config") or None,
            "source": {"checkpoint": str(predictor.checkpoint), "cifarlab_version": __version__, "torch_version": torch.__version__},
        },
    )
    params = sum(p.numel() for p in model.parameters())
    card = model_card(config, params, run_measurements(predictor.checkpoint.parent, state.get("epoch")))
    atomic_write_bytes(folder / EXPORT_CARD, card.encode())
    return config


def check_export_folder(output: Path) -> None:
    """ExportError unless `output` may become the export: absent, empty, or an earlier export."""
    if not output.parent.is_dir():
        raise ExportError(f"{output.parent}: no such folder for the exported model")
    if output.is_file():
        raise ExportError(f"--output {output}: is a file; name a folder for the export")
    if output.is_dir() and os.listdir(output) and not _is_earlier_export(output):
        raise ExportError(f"--output {output}: holds files that are not a cifarlab export; choose another folder")


def _is_earlier_export(folder: Path) -> bool:
    """A folder holding nothing but an export's files (and its evaluation), config.json saying so."""
    if not set(os.listdir(folder)) <= {EXPORT_WEIGHTS, EXPORT_CONFIG, EXPORT_CARD, EVALUATION}:
        return False
    try:
        read_export_config(folder)
    except RunError:
        return False
    return True


def _replace_folder(new: Path, output: Path) -> None:
    """Move the checked export into place; an earlier export there goes only once the new one is in."""
    old = output.with_name(f".{output.name}.{secrets.token_hex(4)}.old")
    if output.exists():
        os.replace(output, old)
    try:
        os.replace(new, output)
    except BaseException:
        if old.exists():
            os.replace(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)
