"""The run directory: the one place a run's config, metrics, checkpoints and results live.

    RUNDIR/config.json      resolved TrainConfig (plus data and device facts)
    RUNDIR/metrics.jsonl    one JSON object per finished epoch
    RUNDIR/checkpoint.pt    latest training state: model, optimizer, schedule, RNG, metadata
    RUNDIR/status.json      running / finished / stopped / failed, with the reason
    RUNDIR/results.json     final figures, written once at the end
    RUNDIR/evaluation.json  written by `cifarlab evaluate`

Every file but metrics.jsonl is written atomically (temporary file, fsync, rename), so a
run killed at any moment leaves either the old file or the new one, never half of one.
Files are created with the user's umask, as any other program's files are.
Checkpoints hold only tensors and plain Python values and load with `weights_only=True`.
"""

from __future__ import annotations

import io
import json
import os
import secrets
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cifarlab.errors import CifarlabError
from cifarlab.models import build_model

CONFIG, METRICS, CHECKPOINT, STATUS, RESULTS, EVALUATION = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "status.json",
    "results.json",
    "evaluation.json",
)


class RunError(CifarlabError):
    """A path that is not a run or a checkpoint that cannot be used; the message is one line."""


# ---------------------------------------------------------------- atomic files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new file .NAME.RANDOM.tmp next to `path`, created as open() creates files: mode 0666 less
    the umask (mkstemp's 0600 would keep teammates from reading a shared run's reports)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary file name for {path.name}")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None


def read_metrics(path: Path) -> tuple[list[dict], bool]:
    """Epoch records and whether the file ended in a partial line (a run killed mid-write)."""
    records, partial = [], False
    if not Path(path).exists():
        return records, partial
    lines = Path(path).read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                partial = True  # only the last line may be cut short
            else:
                raise RunError(f"{path}: line {n} is not valid JSON") from None
    return records, partial


# ---------------------------------------------------------------- run directory


class RunDir:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return self.file(CONFIG).is_file()

    def require(self) -> "RunDir":
        if not self.path.is_dir():
            raise RunError(f"{self.path}: no such run directory")
        if not self.exists():
            raise RunError(f"{self.path}: not a run directory (no {CONFIG})")
        return self

    def config(self) -> dict:
        return read_json(self.file(CONFIG))

    def metrics(self) -> tuple[list[dict], bool]:
        return read_metrics(self.file(METRICS))

    def results(self) -> dict | None:
        return read_json(self.file(RESULTS)) if self.file(RESULTS).exists() else None

    def status(self) -> dict:
        return read_json(self.file(STATUS)) if self.file(STATUS).exists() else {"status": "unknown"}

    def write_status(self, status: str, **info) -> None:
        atomic_write_json(self.file(STATUS), {"status": status, "pid": os.getpid(), **info})


# ---------------------------------------------------------------- checkpoints


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
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors all mean: not a usable checkpoint
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{path}: not a readable cifarlab checkpoint ({first_line})") from None
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise RunError(f"{path}: not a cifarlab checkpoint (no model state or metadata)")
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


META_KEYS = ("model", "model_options", "classes", "mean", "std")  # what predict/export/serve rely on


def model_from_checkpoint(state: dict, source: str = "checkpoint") -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint describes and load its weights; one-line errors."""
    meta = state["meta"]
    missing = [k for k in META_KEYS if k not in meta] if isinstance(meta, dict) else list(META_KEYS)
    if missing:
        raise RunError(f"{source}: checkpoint metadata lacks {', '.join(missing)}")
    try:
        model = build_model(meta["model"], **meta["model_options"])
        model.load_state_dict(state["model"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise RunError(f"{source}: cannot rebuild model {meta.get('model')!r}: {_first_problem(e)}") from None
    model.eval()
    return model, meta


def load_initial_weights(model: nn.Module, source: Path | str) -> dict:
    """Load the weights (only) of a run's checkpoint into `model` for a warm start; returns what
    config.json records about the source. One-line errors when the shapes do not fit."""
    ckpt = checkpoint_path(source)
    state = load_checkpoint(ckpt)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise RunError(f"--init-from {ckpt}: its weights do not fit this model: {_first_problem(e)}") from None
    return {"checkpoint": str(ckpt.resolve()), "epoch": state.get("epoch"), "model": state["meta"].get("model")}


def _first_problem(error: Exception) -> str:
    """One line for a model-building error; load_state_dict's first line is only a heading."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        return lines[1] + more
    return lines[0]
