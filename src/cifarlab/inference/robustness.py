"""`cifarlab evaluate --corruptions`: accuracy under common corruptions, per corruption and severity,
and on CIFAR-10.1; written to RUNDIR/robustness.json.

The corrupted images are generated from the test set (data/corruptions.py: Hendrycks & Dietterich's
parameters, deterministic for a seed) or, given `--corruptions-dir`, read from the published
CIFAR-10-C files; each result says which in its "source". Clean accuracy is measured on the same
test images the corruptions were made from, with the same test-time augmentation and dtype, so the
relative drop (clean - mean) / clean compares like with like.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cifarlab.common import runfiles
from cifarlab.common.metrics import score
from cifarlab.common.rundir import ROBUSTNESS
from cifarlab.common.runfiles import SEVERITIES
from cifarlab.data import DataError, load_cifar10
from cifarlab.data.shifted import Cifar10C, LabelledImages, load_cifar101, open_cifar10c
from cifarlab.errors import CifarlabError
from cifarlab.inference.model import Predictor, data_dir_for
from cifarlab.runtime import autocast_dtype

GENERATED = "generated, CIFAR-10-C-style (Hendrycks & Dietterich parameters)"
FROM_FILES = "CIFAR-10-C (files)"


class RobustnessError(CifarlabError):
    """Bad robustness options; the message is one line."""


@dataclass(frozen=True)
class RobustnessRequest:
    """What `evaluate` was asked to measure beyond clean accuracy."""

    corruptions: bool = False  # generated corruptions (or the files of corruptions_dir)
    corruptions_dir: Path | None = None  # the published CIFAR-10-C folder, read instead of generating
    cifar101_dir: Path | None = None
    names: tuple[str, ...] | None = None  # corruptions to use (default: all there are)
    subset: int | None = None  # only the first N test images (default: all)
    seed: int = 0

    @property
    def wanted(self) -> bool:
        return self.corruptions or self.corruptions_dir is not None or self.cifar101_dir is not None

    @property
    def wants_corruptions(self) -> bool:
        return self.corruptions or self.corruptions_dir is not None


def check_request(request: RobustnessRequest) -> tuple[Cifar10C | None, LabelledImages | None]:
    """Options and input files checked before any work; the opened CIFAR-10-C and CIFAR-10.1 sets."""
    if request.subset is not None and request.subset < 1:
        raise RobustnessError(f"--corruption-subset {request.subset}: must be at least 1")
    names = list(request.names) if request.names else None
    if names and len(set(names)) != len(names):
        raise RobustnessError("--corruption-names names a corruption twice")
    files = open_cifar10c(request.corruptions_dir, names) if request.corruptions_dir is not None else None
    if request.corruptions and files is None:
        from cifarlab.data.corruptions import check_seed  # needs scipy and Pillow: imported only when asked for

        check_seed(request.seed)
        known = _generated_corruptions()
        unknown = [n for n in names or [] if n not in known]
        if unknown:
            raise RobustnessError(f"--corruption-names: unknown corruption {unknown[0]!r}; known: {', '.join(known)}")
    cifar101 = load_cifar101(request.cifar101_dir) if request.cifar101_dir is not None else None
    return files, cifar101


def _generated_corruptions() -> tuple[str, ...]:
    from cifarlab.data.corruptions import CORRUPTIONS  # needs scipy and Pillow: imported only when asked for

    return CORRUPTIONS


# ---------------------------------------------------------------- measuring


def accuracy(model: Predictor, images: torch.Tensor, labels: torch.Tensor, tta: int) -> float:
    return score(model.logits(images, tta), labels, len(model.classes)).accuracy


SeverityImages = Callable[[str, int], tuple[torch.Tensor, torch.Tensor]]


def corruption_accuracies(
    model: Predictor, names: list[str], severity_images: SeverityImages, tta: int, log: Callable[[str], None]
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Accuracy per corruption and severity 1-5, and the seconds spent making images and predicting."""
    table: dict[str, list[float]] = {}
    seconds = {"making_images": 0.0, "predicting": 0.0}
    for done, name in enumerate(names, 1):
        row = []
        for severity in SEVERITIES:
            start = time.perf_counter()
            images, labels = severity_images(name, severity)
            made = time.perf_counter()
            row.append(accuracy(model, images, labels, tta))
            seconds["making_images"] += made - start
            seconds["predicting"] += time.perf_counter() - made
        table[name] = row
        # progress only: the table itself is printed once, when every corruption is measured
        log(f"measured {done} of {len(names)} corruptions ({name}), {sum(seconds.values()):.0f} s so far")
    return table, seconds


def _generated_source(images: torch.Tensor, labels: torch.Tensor, seed: int) -> SeverityImages:
    from cifarlab.data.corruptions import corrupt

    return lambda name, severity: (corrupt(images, name, severity, seed), labels)


def _check_same_test_set(files: Cifar10C, test_labels: torch.Tensor) -> None:
    """CIFAR-10-C holds the test images in order: its labels must be the test set's."""
    count = min(files.per_severity, len(test_labels))
    theirs, ours = files.labels[:count], test_labels[:count].numpy()
    differ = (theirs != ours).nonzero()[0]
    if files.per_severity != len(test_labels) or len(differ):
        where = (
            f"label of image {differ[0]} is {theirs[differ[0]]}, the test set's {ours[differ[0]]}"
            if len(differ)
            else (f"{files.per_severity:,} images per severity, the test set {len(test_labels):,}")
        )
        raise DataError(f"{files.folder}: not made from this CIFAR-10 test set ({where})")


def corruption_result(
    model: Predictor,
    files: Cifar10C | None,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    request: RobustnessRequest,
    tta: int,
    log: Callable[[str], None],
) -> dict:
    """The "corruptions" part of robustness.json: from the files when given, else generated."""
    count = len(test_labels)
    if files is not None:
        names = list(files.corruptions)
        table, seconds = corruption_accuracies(model, names, lambda n, s: files.severity(n, s, count), tta, log)
        origin: dict[str, Any] = {"source": FROM_FILES, "folder": str(files.folder)}
    else:
        names = list(request.names or _generated_corruptions())
        table, seconds = corruption_accuracies(model, names, _generated_source(test_images, test_labels, request.seed), tta, log)
        origin = {"source": GENERATED, "seed": request.seed}
    mean = sum(sum(row) for row in table.values()) / (len(SEVERITIES) * len(table))
    return {
        **origin,
        "images": count,
        "severities": list(SEVERITIES),
        "accuracy": table,
        "mean_accuracy": mean,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def relative_drop(clean: float, shifted: float) -> float | None:
    """(clean - shifted) / clean: the share of clean accuracy lost."""
    return (clean - shifted) / clean if clean > 0 else None


def evaluate_robustness(
    path: Path | str,
    request: RobustnessRequest,
    data_dir: Path | str | None = None,
    device: str = "auto",
    tta: int | None = None,
    batch_size: int = 1000,
    amp: str = "off",
    log: Callable[[str], None] = lambda s: None,
) -> tuple[dict, Path]:
    """Measure what `request` asks of a run's (or checkpoint's) model; write RUNDIR/robustness.json."""
    files, cifar101 = check_request(request)  # bad files fail here, before minutes of work
    model = Predictor(path, device=device, batch_size=batch_size, amp=amp)
    tta = model.trained_tta if tta is None else tta
    data = load_cifar10(data_dir_for(data_dir, model.checkpoint))
    if files is not None:
        _check_same_test_set(files, data.test_labels)
    count = len(data.test_labels) if request.subset is None else min(request.subset, len(data.test_labels))
    images, labels = data.test_images[:count], data.test_labels[:count]
    clean = accuracy(model, images, labels, tta)
    result: dict[str, Any] = {
        "checkpoint": str(model.checkpoint),
        "epoch": model.epoch,
        "tta": tta,
        "dtype": autocast_dtype(amp, model.device),
        "clean": {"images": count, "accuracy": clean},
    }
    if request.wants_corruptions:
        log(f"measuring accuracy under corruptions at severities 1-5 on {count:,} test images (clean accuracy {clean:.2%})")
        result["corruptions"] = corruption_result(model, files, images, labels, request, tta, log)
        result["corruptions"]["relative_drop"] = relative_drop(clean, result["corruptions"]["mean_accuracy"])
    if cifar101 is not None:
        shifted = accuracy(model, cifar101.images, cifar101.labels, tta)
        result["cifar10_1"] = {
            "source": cifar101.source,
            "file": str(cifar101.path),
            "images": len(cifar101.labels),
            "accuracy": shifted,
            "relative_drop": relative_drop(clean, shifted),
        }
    output = model.checkpoint.parent / ROBUSTNESS
    runfiles.write(runfiles.Robustness, output, result)
    return result, output


# ---------------------------------------------------------------- reading it back


def read_robustness(path: Path) -> dict:
    """robustness.json, its shape checked: RunError naming the file and field for a damaged one."""
    return runfiles.read(runfiles.Robustness, path)


def run_robustness(run: Path | str) -> dict | None:
    """A run directory's robustness.json, checked, or None when it has none."""
    path = Path(run) / ROBUSTNESS
    return read_robustness(path) if path.exists() else None


# ---------------------------------------------------------------- terminal text


def format_robustness(result: dict) -> str:
    """The table (rows: corruption, columns: severities 1-5 and mean) and the summary lines."""
    clean = result["clean"]
    lines = [f"clean accuracy {clean['accuracy']:.2%} on the first {clean['images']:,} test images (tta={result['tta']})"]
    part = result.get("corruptions")
    if part:
        seed = f", seed {part['seed']}" if "seed" in part else ""
        lines += ["", f"accuracy under corruptions: {part['source']}{seed}, {part['images']:,} images per corruption and severity"]
        width = max(len("corruption"), *(len(n) for n in part["accuracy"]))
        lines.append(f"{'corruption':<{width}}" + "".join(f"{s:>8}" for s in SEVERITIES) + f"{'mean':>8}")
        rows = list(part["accuracy"].items())
        for name, row in rows:
            lines.append(f"{name:<{width}}" + "".join(f"{a:>8.2%}" for a in row) + f"{sum(row) / len(row):>8.2%}")
        by_severity = [sum(row[i] for _, row in rows) / len(rows) for i in range(len(SEVERITIES))]
        lines.append(f"{'mean':<{width}}" + "".join(f"{a:>8.2%}" for a in by_severity) + f"{part['mean_accuracy']:>8.2%}")
        lines.append(f"mean corruption accuracy {part['mean_accuracy']:.2%}, relative drop from clean {_pct(part.get('relative_drop'))}")
    shifted = result.get("cifar10_1")
    if shifted:
        lines += [
            "",
            (
                f"{shifted['source']}: accuracy {shifted['accuracy']:.2%} on {shifted['images']:,} images, "
                f"relative drop from clean {_pct(shifted.get('relative_drop'))}"
            ),
        ]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"
