"""One schema, one reader and one writer per run file (Pydantic v2 models).

Every reader and writer of a run's JSON files goes through `read` and `write` here, so that a
damaged or hand-edited file is refused the same way by every command, as a one-line RunError
naming the file and the field: `results.json: test_accuracy should be a number, found text`.
A file is validated when it is written too: a writer that produced the wrong shape is a bug
caught at once, not by the next reader.

The schemas check what is computed with, sorted by or divided by; other fields are kept as
written (extra="allow") and shown as they are. Validation is strict: "2" is not the integer 2
and true is not a number. The train section of config.json is checked further by TrainConfig
(training/config.py), which knows every field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from cifarlab.common.files import (
    RunError,
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    json_kind,
    parse_json,
    read_json,
    read_text,
)

# The range `calibrate` searches for a temperature (common/metrics.fit_temperature); a stored
# temperature outside it was not fitted by cifarlab (1e-300 would turn every probability into NaN).
TEMPERATURE_RANGE = (0.05, 20.0)  # far beyond any trained network's: a fit at an end means broken logits
SEVERITIES = (1, 2, 3, 4, 5)  # CIFAR-10-C's corruption severities


class Schema(BaseModel):
    """A run file's shape: strict types, fields it does not name kept as written."""

    model_config = ConfigDict(strict=True, extra="allow")


Number = float | None  # strict: an int or a float, never a bool or text; null where not measured
Integer = int | None
Text = str | None


def _in_temperature_range(value: float) -> float:
    lo, hi = TEMPERATURE_RANGE
    if not (math.isfinite(value) and lo * (1 - 1e-9) <= value <= hi * (1 + 1e-9)):
        raise ValueError(f"should be between {lo:g} and {hi:g} (the range calibrate searches)")
    return value


# ---------------------------------------------------------------- the files of a run


class TrainSection(Schema):
    """config.json's "train": the fields every reader computes with (TrainConfig checks them all)."""

    preset: Text = None
    model: Text = None
    epochs: Integer = None
    tta: Integer = None


class RunConfig(Schema):
    """config.json: the resolved TrainConfig and the facts of its data and device."""

    train: TrainSection
    params: Integer = None
    train_subset: Integer = None
    train_images: Integer = None
    val_images: Integer = None
    device: Text = None
    data: Text = None


class EpochRecord(Schema):
    """One line of metrics.jsonl (and one entry of a checkpoint's history)."""

    epoch: int
    lr: float
    elapsed_seconds: float
    train_loss: Number = None
    train_accuracy: Number = None
    val_loss: Number = None
    val_accuracy: Number = None
    steps: Integer = None
    train_seconds: Number = None
    epoch_seconds: Number = None


class Status(Schema):
    """status.json: running / finished / stopped / failed, the reason, the epochs finished (epoch)
    and, while running, the epoch the run is in (current_epoch)."""

    status: Text = None
    reason: Text = None
    pid: Integer = None
    epoch: Integer = None
    current_epoch: Integer = None


class Results(Schema):
    """results.json, and the test figures of evaluation.json."""

    test_accuracy: Number = None
    test_error: Number = None
    test_loss: Number = None
    best_val_accuracy: Number = None
    final_val_accuracy: Number = None
    params: Integer = None
    epochs: Integer = None
    seconds_per_step: Number = None
    seconds_per_epoch: Number = None
    stabilised_epoch: Integer = None
    seconds_to_stabilise: Number = None
    train_seconds: Number = None
    eval_seconds: Number = None
    stop_epoch: Integer = None
    device: Text = None
    per_class_accuracy: dict[str, float] | None = None


class Evaluation(Results):
    """evaluation.json, written by `cifarlab evaluate`."""

    epoch: Integer = None
    tta: Integer = None
    test_images: Integer = None
    classes: list[str] | None = None
    confusion_matrix: list[list[int]] | None = None


class Calibration(Schema):
    """calibration.json: the temperature fitted on the validation split, with its figures."""

    temperature: Annotated[float, AfterValidator(_in_temperature_range)]
    epoch: Integer = None
    fitted_on: Text = None
    tta: Integer = None
    val_nll_before: Number = None
    val_nll_after: Number = None


class CleanFigures(Schema):
    accuracy: float
    images: int


def _one_per_severity(accuracies: list[float]) -> list[float]:
    if len(accuracies) != len(SEVERITIES):
        raise ValueError(f"should be {len(SEVERITIES)} accuracies (one per severity)")
    return accuracies


SeverityAccuracies = Annotated[list[float], AfterValidator(_one_per_severity)]


class CorruptionFigures(Schema):
    source: str
    mean_accuracy: float
    images: int
    accuracy: Annotated[dict[str, SeverityAccuracies], Field(min_length=1)]  # corruption: accuracy at each severity
    seed: Integer = None
    relative_drop: Number = None


class ShiftedFigures(Schema):
    source: str
    accuracy: float
    images: int
    relative_drop: Number = None


class Robustness(Schema):
    """robustness.json, written by `cifarlab evaluate --corruptions` (or --cifar101-dir)."""

    clean: CleanFigures
    tta: Integer = None
    corruptions: CorruptionFigures | None = None
    cifar10_1: ShiftedFigures | None = None


class ExportWeights(Schema):
    sha256: str
    file: Text = None
    dtype: Text = None


class ExportConfig(Schema):
    """An export's config.json (its model metadata is checked as a checkpoint's, common/checkpoint.py)."""

    format: Literal["cifarlab-safetensors"]
    format_version: Annotated[int, Field(ge=1)]
    weights: ExportWeights
    epoch: Integer = None
    recipe: dict[str, Any] | None = None


# ---------------------------------------------------------------- reading and writing


def check(schema: type[Schema], value: Any, where: str) -> dict:
    """`value`, unchanged, when it fits `schema`; else RunError naming `where` and the first field that does not."""
    try:
        schema.model_validate(value)
    except ValidationError as e:
        raise RunError(problem(where, e.errors(include_url=False)[0])) from None
    except RecursionError:
        raise RunError(f"{where}: nested too deeply") from None
    return value


def read(schema: type[Schema], path: Path | str) -> dict:
    """A run file's JSON object, checked against its schema."""
    return check(schema, read_json(path), str(path))


def read_optional(schema: type[Schema], path: Path | str) -> dict | None:
    """As `read`, or None when the file does not exist (a measurement not made)."""
    return read(schema, path) if Path(path).exists() else None


def write(schema: type[Schema], path: Path | str, value: dict) -> None:
    """Write a run file atomically, after checking it against its schema."""
    atomic_write_json(path, check(schema, value, str(path)))


def read_metrics(path: Path | str) -> tuple[list[dict], bool]:
    """metrics.jsonl's records and whether it ended in a partial line (a run killed mid-write)."""
    path = Path(path)
    if not path.exists():
        return [], False
    records, partial = [], False
    lines = read_text(path).splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line, f"{path}: line {n}")
        except RunError:
            if n == len(lines):
                partial = True  # only the last line may be cut short
                continue
            raise RunError(f"{path}: line {n} is not valid JSON") from None
        records.append(check(EpochRecord, record, f"{path}: line {n}"))
    return records, partial


def append_metric(path: Path | str, record: dict) -> None:
    append_jsonl(path, check(EpochRecord, record, str(path)))


def write_metrics(path: Path | str, history: list[dict]) -> None:
    """metrics.jsonl rewritten whole (a resume drops the epochs its checkpoint never saved)."""
    for n, record in enumerate(history, 1):
        check(EpochRecord, record, f"{path}: line {n}")
    atomic_write_bytes(path, "".join(json.dumps(h) + "\n" for h in history).encode())


def check_history(history: list, where: str) -> list[dict]:
    """A checkpoint's history: every record complete (a resume continues from its last)."""
    for n, record in enumerate(history, 1):
        entry = f"{where}: history entry {n}"
        missing = [k for k in EpochRecord.model_fields if isinstance(record, dict) and k not in record]
        if missing:
            raise RunError(f"{entry} lacks {', '.join(missing)}")
        check(EpochRecord, record, entry)
    return history


# ---------------------------------------------------------------- one line per problem

_KINDS = {
    "float": "a number",
    "int": "an integer",
    "string": "text",
    "bool": "true/false",
    "dict": "an object",
    "model": "an object",
    "list": "a list",
    "tuple": "a list",
}


def problem(where: str, error: Any) -> str:
    """Pydantic's error as the one line a person reads: the file, the field, what it should be."""
    loc = [str(p) for p in error["loc"]]
    field, kind = ".".join(loc), error["type"]
    found = error.get("input")
    if kind == "missing":
        parent = ".".join(loc[:-1])
        return f"{where}: {parent} lacks {loc[-1]}" if parent else f"{where} lacks {loc[-1]}"
    if kind == "extra_forbidden":
        return f"{where}: unknown field {field!r}"
    words = _KINDS.get(kind.split("_")[0]) if kind.endswith("_type") or kind in ("int_from_float", "float_parsing") else None
    if words and not loc:
        return f"{where} should be a JSON {words.removeprefix('an ').removeprefix('a ')}, found {json_kind(found)}"
    if words:
        return f"{where}: {field} should be {words}, found {json_kind(found)}"
    if kind in ("too_short", "too_long"):
        ctx = error.get("ctx", {})
        bound = ("at least " + str(ctx.get("min_length"))) if kind == "too_short" else ("at most " + str(ctx.get("max_length")))
        return f"{where}: {field} should have {bound} entries, found {ctx.get('actual_length')}"
    message = error["msg"].removeprefix("Value error, ").removeprefix("Input ")
    shown = json.dumps(found)[:60] if not isinstance(found, dict) else json_kind(found)
    return f"{where}: {field} {message}, found {shown}"
