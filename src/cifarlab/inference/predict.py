"""Predict classes of image files with a saved model.

Every image goes through one path: Pillow decodes it (with decompression-bomb protection),
it becomes 32x32 RGB uint8 (see `to_model_input` for exactly how), and the logits come from
the one loaded-model class, `inference.model.Predictor`, that `cifarlab evaluate` uses too: a
32x32 PNG of a test image gets bit-for-bit the logits `evaluate` computes for it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from cifarlab.common.files import atomic_write_bytes
from cifarlab.errors import CifarlabError
from cifarlab.inference.model import Predictor
from cifarlab.text import first_problem, plural

try:
    from PIL import Image, ImageOps, UnidentifiedImageError
except ImportError:  # pillow is the `predict` extra; the core install works without it
    Image = None  # type: ignore[assignment]  # None marks pillow as missing (checked before use)

# Images above this many pixels are refused before decoding (a 4096x4096 photo is allowed).
# Pillow's own limit (Image.MAX_IMAGE_PIXELS) stays in force behind it, and its
# DecompressionBombWarning is turned into an error here.
MAX_PIXELS = 4096 * 4096
SIZE = 32
ORIENTATION = 0x0112  # the EXIF tag


class PredictError(CifarlabError):
    """Bad input to predict as a whole (no images, bad output name); the message is one line."""


class ImageError(Exception):
    """One file or upload that cannot be used as an image; the message is one line."""


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image as the model sees it, and what was done to get there."""

    pixels: torch.Tensor  # uint8 (3, 32, 32), RGB
    original_size: tuple[int, int]  # (width, height)
    original_mode: str
    converted: tuple[str, ...]  # empty when the file already was 32x32 RGB


def _require_pillow() -> None:
    if Image is None:
        raise PredictError("Pillow is not installed: pip install 'cifarlab[predict]'")


def load_image(source: Path | str | bytes | BinaryIO, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Decode an image file (path, bytes or file object) into the model's 32x32 RGB input.

    Raises ImageError for anything that is not a complete image of at most `max_pixels` pixels.
    """
    _require_pillow()
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                width, height = im.size  # from the header: nothing decoded yet
                if width * height > max_pixels:
                    raise ImageError(f"too many pixels ({width}x{height}; the limit is {max_pixels:,})")
                im.load()
                pixels, converted = to_model_input(im)
                mode = im.mode
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (Pillow cannot identify the format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"refused as a possible decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt data
        raise ImageError(f"unreadable image ({first_problem(e)})") from None
    return LoadedImage(pixels, (width, height), mode, converted)


def to_model_input(im: Image.Image) -> tuple[torch.Tensor, tuple[str, ...]]:
    """A decoded Pillow image as uint8 (3, 32, 32) RGB, and a note for each change made.

    - EXIF orientation is applied (photos from phones are stored rotated).
    - Transparency is composited over white; greyscale, palette, CMYK etc. become RGB
      (16-bit greyscale is scaled to 8 bits first).
    - Any other size is centre-cropped to the image's aspect ratio 1:1 (the largest central
      square) and resized to 32x32 with Pillow's antialiased bicubic filter (ImageOps.fit).
    """
    converted = []
    if im.getexif().get(ORIENTATION, 1) != 1:
        im = ImageOps.exif_transpose(im)
        converted.append("turned upright by its EXIF orientation")
    if im.mode != "RGB":
        source_mode = im.mode
        if source_mode.startswith("I;16"):  # 16-bit greyscale: scale to 8 bits (Pillow would clip at 255)
            im = Image.fromarray(np.round(np.asarray(im, dtype=np.float64) / 257).astype(np.uint8), "L")
        if "A" in im.getbands() or "transparency" in im.info:
            rgba = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
            converted.append(f"{source_mode} to RGB over white")
        else:
            im = im.convert("RGB")
            converted.append(f"{source_mode} to RGB")
    if im.size != (SIZE, SIZE):
        converted.append(f"resized {im.size[0]}x{im.size[1]} to {SIZE}x{SIZE} (centre crop, bicubic)")
        im = ImageOps.fit(im, (SIZE, SIZE), method=Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    return pixels, tuple(converted)


def find_images(paths: Iterable[Path | str]) -> tuple[list[Path], int]:
    """Files to predict: every file named, and in folders (recursively) every file whose
    extension Pillow knows; also returns how many other files the folders held."""
    _require_pillow()
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    found: list[Path] = []
    skipped = 0
    for path in map(Path, paths):
        if not path.is_dir():
            found.append(path)  # named explicitly: tried, and reported if it is not an image
            continue
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if file.suffix.lower() in extensions:
                found.append(file)
            else:
                skipped += 1
    return found, skipped


def folder_labels(folder: Path, files: list[Path], classes: list[str]) -> dict[Path, str]:
    """True classes from an image-folder layout (FOLDER/CLASS/.../file), or {} if it is not one.

    It is one when every file under FOLDER sits in a subfolder named after a class.
    """
    labels = {}
    for file in files:
        try:
            parts = file.relative_to(folder).parts
        except ValueError:
            continue
        if len(parts) < 2 or parts[0] not in classes:
            return {}
        labels[file] = parts[0]
    return labels


# ---------------------------------------------------------------- files


@dataclass
class FileResult:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    logits: list[float] = field(default_factory=list)
    converted: tuple[str, ...] = ()
    original_size: tuple[int, int] | None = None
    original_mode: str | None = None
    label: str | None = None
    error: str | None = None

    @property
    def correct(self) -> bool | None:
        return None if self.label is None or self.error else self.top[0][0] == self.label

    def to_dict(self) -> dict:
        if self.error:
            return {"path": self.path, "top1": None, "top1_prob": None, "error": self.error}
        assert self.original_size is not None  # every image without an error was loaded, and measured
        return {
            "path": self.path,
            "top1": self.top[0][0],
            "top1_prob": self.top[0][1],
            "top_k": [{"class": c, "prob": p} for c, p in self.top],
            "converted": list(self.converted),
            "original_size": list(self.original_size),
            "original_mode": self.original_mode,
            "label": self.label,
            "correct": self.correct,
            "logits": self.logits,
        }


@dataclass
class PredictReport:
    checkpoint: str
    top_k: int
    results: list[FileResult]
    skipped: int  # files in folders without an image extension

    @property
    def errors(self) -> list[FileResult]:
        return [r for r in self.results if r.error]

    def accuracy(self) -> tuple[float, dict[str, float], int] | None:
        """Accuracy, per-class accuracy and count over labelled files, or None when unlabelled."""
        marks = [(r.label, r.correct) for r in self.results if r.label is not None and r.correct is not None]
        if not marks:  # (r.correct is None without a label: the first test only narrows r.label's type)
            return None
        per_class: dict[str, list[bool]] = {}
        for label, correct in marks:
            per_class.setdefault(label, []).append(correct)
        overall = sum(correct for _, correct in marks) / len(marks)
        return overall, {c: sum(v) / len(v) for c, v in sorted(per_class.items())}, len(marks)

    def to_dict(self) -> dict:
        acc = self.accuracy()
        return {
            "checkpoint": self.checkpoint,
            "top_k": self.top_k,
            "files": len(self.results),
            "errors": len(self.errors),
            "accuracy": acc[0] if acc else None,
            "per_class_accuracy": acc[1] if acc else None,
            "labelled_files": acc[2] if acc else 0,
            "predictions": [r.to_dict() for r in self.results],
        }


def predict_paths(
    predictor: Predictor,
    paths: list[Path | str],
    top_k: int = 3,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> PredictReport:
    """Predict every image in `paths` (files or folders) in batches; bad files become error rows."""
    predictor.check_top_k(top_k)
    files, skipped = find_images(paths)
    if not files:
        raise PredictError(f"no image files in {', '.join(map(str, paths))}")
    labels: dict[Path, str] = {}
    for path in map(Path, paths):
        if path.is_dir():
            labels.update(folder_labels(path, files, predictor.classes))
    results = []
    from tqdm import tqdm

    bar = tqdm(total=len(files), unit="img", disable=not progress or len(files) <= predictor.batch_size, leave=False)
    for start in range(0, len(files), predictor.batch_size):
        chunk = files[start : start + predictor.batch_size]
        loaded: list[tuple[FileResult, LoadedImage]] = []
        for file in chunk:
            result = FileResult(path=str(file), label=labels.get(file))
            try:
                image = load_image(file)
            except ImageError as e:
                result.error = str(e)
            else:
                loaded.append((result, image))
            results.append(result)
        if loaded:
            logits = predictor.logits(torch.stack([image.pixels for _, image in loaded]))
            for (result, image), row, top in zip(loaded, logits, predictor.top_k(logits, top_k)):
                result.top, result.logits = top, row.tolist()
                result.converted, result.original_size, result.original_mode = (
                    image.converted,
                    image.original_size,
                    image.original_mode,
                )
        bar.update(len(chunk))
    bar.close()
    return PredictReport(str(predictor.checkpoint), top_k, results, skipped)


# ---------------------------------------------------------------- output


def check_output_name(output: Path | None) -> None:
    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        raise PredictError(f"--output {output}: the name must end in .csv or .json")


def write_report(report: PredictReport, output: Path) -> None:
    """CSV (one row per file) or JSON (summary plus one object per file), written atomically."""
    check_output_name(output)
    if output.suffix.lower() == ".json":
        atomic_write_bytes(output, (json.dumps(report.to_dict(), indent=2) + "\n").encode())
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    rank_columns = [name for i in range(1, report.top_k + 1) for name in (f"top{i}", f"top{i}_prob")]
    writer.writerow(["path", *rank_columns, "converted", "label", "correct", "error"])
    for r in report.results:
        ranks = [v for c, p in r.top for v in (c, f"{p:.6f}")]
        ranks += [""] * (len(rank_columns) - len(ranks))
        correct = "" if r.correct is None else int(r.correct)
        writer.writerow([r.path, *ranks, "; ".join(r.converted), r.label or "", correct, r.error or ""])
    # surrogateescape: a file name that is not UTF-8 is written back as the bytes it was
    atomic_write_bytes(output, buffer.getvalue().encode("utf-8", "surrogateescape"))


def printable(path: str) -> str:
    """A file name for a terminal: bytes that are not UTF-8 shown as \\xNN instead of failing to print."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def format_report(report: PredictReport) -> str:
    """A table of file, top-k classes and notes; errors on their own lines; accuracy if labelled."""
    shown = {r.path: printable(r.path) for r in report.results}
    width = min(60, max(len(s) for s in shown.values()))
    lines = [f"{'file':<{width}}  top-{report.top_k}"]
    for r in report.results:
        if r.error:
            lines.append(f"{shown[r.path]:<{width}}  error: {r.error}")
            continue
        classes = "  ".join(f"{c} {p:.1%}" for c, p in r.top)
        note = f"  [{'; '.join(r.converted)}]" if r.converted else ""
        lines.append(f"{shown[r.path]:<{width}}  {classes}{note}")
    done = len(report.results) - len(report.errors)
    summary = f"{done} of {plural(len(report.results), 'file')} predicted, {plural(len(report.errors), 'error')}"
    if report.skipped:
        summary += f", {plural(report.skipped, 'file')} without an image extension skipped"
    lines += ["", summary]
    acc = report.accuracy()
    if acc:
        overall, per_class, n = acc
        lines.append(f"accuracy {overall:.2%} on {plural(n, 'file')} labelled by their folder")
        cw = max(len(c) for c in per_class)
        lines += [f"  {c:<{cw}}  {a:>7.2%}" for c, a in per_class.items()]
    return "\n".join(lines)
