"""Published test sets for robustness, read from their `.npy` files: CIFAR-10-C and CIFAR-10.1.

CIFAR-10-C (Hendrycks & Dietterich, zenodo.org/record/2535967): a folder holding `labels.npy`
(50,000 labels: the 10,000 test labels once per severity) and one `<corruption>.npy` per
corruption, (50,000, 32, 32, 3) uint8, severity 1's 10,000 images first.

CIFAR-10.1 (Recht et al., github.com/modestyachts/CIFAR-10.1): `cifar10.1_v6_data.npy`
(2,000, 32, 32, 3) uint8 and `cifar10.1_v6_labels.npy` (2,000 labels); v4 holds 2,021.

Files are opened with allow_pickle=False (an .npy file cannot run code) and memory-mapped, so a
folder of 19 corruptions costs no memory until an image is used. A wrong shape, dtype, count or
label is a one-line DataError naming the file, found before any evaluation starts.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarlab.data.formats import ANY_RECORD_COUNT_ENV, RECORDS_PER_FILE, DataError
from cifarlab.text import plural

CIFAR10C_LABELS = "labels.npy"
CIFAR10C_SEVERITIES = 5
CIFAR101_VERSIONS = {"v6": 2_000, "v4": 2_021}  # images in each published version; v6 is the recommended one


def _exact_counts() -> bool:
    """False only under the test suite's tiny files (see formats.ANY_RECORD_COUNT_ENV)."""
    return os.environ.get(ANY_RECORD_COUNT_ENV) != "1"


def _not_a_file(path: Path) -> str:
    """What stands at `path` instead of a regular file, in words (a FIFO would block a reader forever)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"is {kind}, not a regular .npy file"


def _open_npy(path: Path) -> np.ndarray:
    """A memory-mapped array from an .npy file; DataError naming the file for anything else."""
    if not path.is_file():
        raise DataError(f"{path}: {_not_a_file(path)}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # not .npy, pickled objects, cut short, unreadable
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise DataError(f"{path}: not a readable .npy array ({reason})") from None


def _check_images(path: Path, images: np.ndarray, count: int | None) -> None:
    """uint8 (count, 32, 32, 3), channels last as published."""
    rows_ok = images.ndim == 4 and (images.shape[0] == count if count is not None else images.shape[0] > 0)
    if images.dtype != np.uint8 or not rows_ok or images.shape[1:] != (32, 32, 3):
        rows = "N" if count is None else f"{count:,}"
        raise DataError(f"{path}: {images.dtype} array of shape {images.shape}, expected ({rows}, 32, 32, 3) uint8")


def _checked_labels(path: Path, labels: np.ndarray, count: int | None) -> np.ndarray:
    """int64 labels 0-9, a vector of `count` (None: any number of them)."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {labels.dtype} array of shape {labels.shape}, expected a vector of integer labels 0-9")
    if count is not None and len(labels) != count:
        raise DataError(f"{path}: {plural(len(labels), 'label')}, expected {count:,}")
    labels = np.array(labels, dtype=np.int64)  # a copy: the memory map is read-only
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if len(bad):
        raise DataError(f"{path}: label {labels[bad[0]]} of image {bad[0]} is outside 0-9")
    return labels


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 as the (N, 3, 32, 32) tensor the models take."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


# ---------------------------------------------------------------- CIFAR-10-C


@dataclass(frozen=True)
class Cifar10C:
    """A checked CIFAR-10-C folder; images are read from the memory-mapped files on demand."""

    folder: Path
    labels: np.ndarray  # (5 * per_severity,) int64
    per_severity: int
    arrays: dict[str, np.ndarray]  # corruption name -> memory-mapped (5 * per_severity, 32, 32, 3) uint8

    @property
    def corruptions(self) -> tuple[str, ...]:
        return tuple(self.arrays)

    def severity(self, name: str, severity: int, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `count` (default all) images of one corruption at one severity, and their labels."""
        count = self.per_severity if count is None else min(count, self.per_severity)
        start = (severity - 1) * self.per_severity
        images = np.array(self.arrays[name][start : start + count])  # read these rows only
        return _as_tensor(images), torch.from_numpy(self.labels[start : start + count].copy())


def open_cifar10c(folder: Path | str, names: list[str] | None = None) -> Cifar10C:
    """Check CIFAR-10-C's labels and every corruption file (or those `names`) in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (expected CIFAR-10-C: {CIFAR10C_LABELS} and one .npy per corruption)")
    labels_path = folder / CIFAR10C_LABELS
    expected = CIFAR10C_SEVERITIES * RECORDS_PER_FILE if _exact_counts() else None
    labels = _checked_labels(labels_path, _open_npy(labels_path), expected)
    per_severity = _per_severity(labels_path, labels)
    found = sorted(p.stem for p in folder.glob("*.npy") if p.name != CIFAR10C_LABELS)
    if names is None:
        names = found
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{folder}: no {missing[0]}.npy (found: {', '.join(found) or 'no corruption files'})")
    if not names:
        raise DataError(f"{folder}: holds {CIFAR10C_LABELS} but no corruption files (<corruption>.npy)")
    arrays = {}
    for name in names:
        path = folder / f"{name}.npy"
        arrays[name] = _open_npy(path)
        _check_images(path, arrays[name], len(labels))
    return Cifar10C(folder, labels, per_severity, arrays)


def _per_severity(path: Path, labels: np.ndarray) -> int:
    """Images per severity; the published labels are the test labels five times over."""
    if len(labels) == 0 or len(labels) % CIFAR10C_SEVERITIES:
        raise DataError(f"{path}: {plural(len(labels), 'label')} is not 5 severities of equally many images")
    blocks = labels.reshape(CIFAR10C_SEVERITIES, -1)
    for severity in range(1, CIFAR10C_SEVERITIES):
        if not np.array_equal(blocks[severity], blocks[0]):
            raise DataError(f"{path}: the labels of severity {severity + 1} differ from severity 1's (each severity holds the same test images)")
    return blocks.shape[1]


# ---------------------------------------------------------------- CIFAR-10.1


@dataclass(frozen=True)
class LabelledImages:
    images: torch.Tensor  # (N, 3, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64
    source: str  # e.g. "CIFAR-10.1 v6"
    path: Path


def cifar101_files(folder: Path, version: str) -> tuple[Path, Path]:
    return folder / f"cifar10.1_{version}_data.npy", folder / f"cifar10.1_{version}_labels.npy"


def load_cifar101(folder: Path | str) -> LabelledImages:
    """CIFAR-10.1 from `folder`: v6 where its files are there, else v4."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (expected CIFAR-10.1's cifar10.1_v6_data.npy and cifar10.1_v6_labels.npy)")
    version = next((v for v in CIFAR101_VERSIONS if cifar101_files(folder, v)[0].exists()), None)
    if version is None:
        raise DataError(f"{folder}: no CIFAR-10.1 files (cifar10.1_v6_data.npy and cifar10.1_v6_labels.npy, or v4's)")
    data_path, labels_path = cifar101_files(folder, version)
    count = CIFAR101_VERSIONS[version] if _exact_counts() else None
    images = _open_npy(data_path)
    _check_images(data_path, images, count)
    labels = _checked_labels(labels_path, _open_npy(labels_path), len(images))
    return LabelledImages(_as_tensor(np.array(images)), torch.from_numpy(labels), f"CIFAR-10.1 {version}", data_path)
