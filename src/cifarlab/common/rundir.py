"""The run directory: the one place a run's config, metrics, checkpoints and results live.

    RUNDIR/config.json      resolved TrainConfig (plus data and device facts)
    RUNDIR/metrics.jsonl    one JSON object per finished epoch
    RUNDIR/checkpoint.pt    latest training state: model, optimizer, schedule, RNG, metadata
    RUNDIR/status.json      running / finished / stopped / failed, with the reason
    RUNDIR/results.json     final figures, written once at the end
    RUNDIR/evaluation.json  written by `cifarlab evaluate`
    RUNDIR/calibration.json written by `cifarlab calibrate`: the temperature fitted on the validation split
    RUNDIR/robustness.json  written by `cifarlab evaluate --corruptions` (or --cifar101-dir)
    RUNDIR/.lock            held (flock) by the one training of the run while it runs
    RUNDIR/robustness.json  figures of a robustness measurement, when one was made
    RUNDIR/calibration.json figures of a calibration measurement, when one was made

A model exported to travel (`cifarlab export --format safetensors`, common/exported.py) is a
folder of its own, by default RUNDIR/safetensors/:

    EXPORT/model.safetensors  the weights
    EXPORT/config.json        what rebuilds the model and feeds it (model, options, classes, normalisation)
    EXPORT/README.md          the model card
    EXPORT/evaluation.json    written by `cifarlab evaluate EXPORT`, as in a run

Every file but metrics.jsonl is written atomically (temporary file, fsync, rename), so a
run killed at any moment leaves either the old file or the new one, never half of one.
Files are created with the user's umask, as any other program's files are.
Checkpoints hold only tensors and plain Python values and load with `weights_only=True`.

Everything read back is checked for shape, so a damaged or hand-edited file is a one-line
RunError naming the file (and field), never a traceback or a wrong figure further on.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import io
import json
import math
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from cifarlab.errors import CifarlabError
from cifarlab.models import build_model

CONFIG, METRICS, CHECKPOINT, STATUS, RESULTS, EVALUATION, CALIBRATION = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "status.json",
    "results.json",
    "evaluation.json",
    "calibration.json",
)
ROBUSTNESS = "robustness.json"
LOCK = ".lock"
TENSORBOARD = "tensorboard"  # the event files of `train --tensorboard`
ROBUSTNESS = "robustness.json"
# The exported folder. Its config file shares the run's name on purpose: config.json is what
# model hubs look for. A run is told apart by its 'train' section, an export by its 'format'.
EXPORT_DIR, EXPORT_WEIGHTS, EXPORT_CONFIG, EXPORT_CARD = "safetensors", "model.safetensors", CONFIG, "README.md"
TRAINING_FILES = (CONFIG, METRICS, CHECKPOINT, STATUS, RESULTS)  # what a training writes, and may write again
LOCK_WAIT_SECONDS = 1.0  # outwaits a `runs` that only looks at the lock (microseconds), never a training (hours)


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


def _is_temporary_of(name: str, target: str) -> bool:
    """Whether `name` is an atomic write's temporary file for `target` (one a kill left behind)."""
    return fnmatch.fnmatchcase(name, f".{target}.*.tmp")


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
    """A file's JSON object; RunError naming the file for anything else: missing, unreadable,
    not UTF-8, not JSON, or JSON of another shape (`[1]`, `null`)."""
    path = Path(path)
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise RunError(f"{path}: should hold a JSON object, found {json_kind(value)}")
    return value


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RunError(f"{path}: not found") from None
    except UnicodeDecodeError as e:
        raise RunError(f"{path}: not valid JSON (not UTF-8 text: byte {e.start})") from None
    except OSError as e:  # a folder of that name, no permission
        raise RunError(f"{path}: cannot be read ({e.strerror})") from None


def read_metrics(path: Path) -> tuple[list[dict], bool]:
    """Epoch records and whether the file ended in a partial line (a run killed mid-write)."""
    path = Path(path)
    if not path.exists():
        return [], False
    records, partial = [], False
    lines = _read_text(path).splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                partial = True  # only the last line may be cut short
                continue
            raise RunError(f"{path}: line {n} is not valid JSON") from None
        records.append(check_epoch_record(record, f"{path}: line {n}"))
    return records, partial


# ---------------------------------------------------------------- shapes of what is read back

NUMBER, INTEGER, TEXT = "a number", "an integer", "text"
_TYPES = {NUMBER: (int, float), INTEGER: (int,), TEXT: (str,)}

# Only the fields that `runs`, `report`, `compare` and a resume compute with or sort by; others are shown as they are.
CONFIG_FIELDS = {"params": INTEGER, "train_subset": INTEGER, "train_images": INTEGER, "val_images": INTEGER, "device": TEXT}
TRAIN_FIELDS = {"preset": TEXT, "model": TEXT, "epochs": INTEGER, "tta": INTEGER}
STATUS_FIELDS = {"status": TEXT, "reason": TEXT, "pid": INTEGER, "epoch": INTEGER}
EPOCH_FIELDS = {
    "epoch": INTEGER, "lr": NUMBER, "train_loss": NUMBER, "train_accuracy": NUMBER, "val_loss": NUMBER,
    "val_accuracy": NUMBER, "steps": INTEGER, "train_seconds": NUMBER, "epoch_seconds": NUMBER, "elapsed_seconds": NUMBER,
}
EPOCH_REQUIRED = ("epoch", "lr", "elapsed_seconds")  # what the curves and tables index directly
RESULTS_FIELDS = {
    "test_accuracy": NUMBER, "test_error": NUMBER, "test_loss": NUMBER, "best_val_accuracy": NUMBER,
    "final_val_accuracy": NUMBER, "params": INTEGER, "epochs": INTEGER, "seconds_per_step": NUMBER,
    "seconds_per_epoch": NUMBER, "stabilised_epoch": INTEGER, "seconds_to_stabilise": NUMBER,
    "train_seconds": NUMBER, "eval_seconds": NUMBER, "stop_epoch": INTEGER, "device": TEXT,
}
CALIBRATION_FIELDS = {"temperature": NUMBER, "epoch": INTEGER, "fitted_on": TEXT, "val_nll_before": NUMBER, "val_nll_after": NUMBER}


def json_kind(value: Any) -> str:
    """What a JSON value is, in a user's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    kinds = {dict: "an object", list: "a list", str: "text", int: "a number", float: "a number"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), type(value).__name__)


def check_fields(where: str, record: dict, fields: dict[str, str], prefix: str = "") -> dict:
    """`record`, or RunError naming `where` and the field whose value (when not null) has the wrong type."""
    for key, kind in fields.items():
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, _TYPES[kind])):
            raise RunError(f"{where}: {prefix}{key} should be {kind}, found {json_kind(value)}")
    return record


def check_epoch_record(record: Any, where: str, required: tuple[str, ...] = EPOCH_REQUIRED) -> dict:
    if not isinstance(record, dict):
        raise RunError(f"{where} should be a JSON object, found {json_kind(record)}")
    missing = [key for key in required if key not in record]
    if missing:
        raise RunError(f"{where} lacks {', '.join(missing)}")
    return check_fields(where, record, EPOCH_FIELDS)


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
        path = self.file(CONFIG)
        config = read_json(path)
        if not isinstance(config.get("train"), dict):
            raise RunError(f"{path}: not a cifarlab run config (no 'train' section)")
        check_fields(str(path), config["train"], TRAIN_FIELDS, prefix="train.")
        return check_fields(str(path), config, CONFIG_FIELDS)

    def metrics(self) -> tuple[list[dict], bool]:
        return read_metrics(self.file(METRICS))

    def results(self) -> dict | None:
        path = self.file(RESULTS)
        if not path.exists():
            return None
        results = check_fields(str(path), read_json(path), RESULTS_FIELDS)
        per_class = results.get("per_class_accuracy")
        if per_class is not None and not (isinstance(per_class, dict) and all(_is_number(v) for v in per_class.values())):
            raise RunError(f"{path}: per_class_accuracy should be an object of numbers, found {json_kind(per_class)}")
        return results

    def measured(self, name: str) -> dict | None:
        """A measurement's JSON object (EVALUATION, ROBUSTNESS, CALIBRATION), or None when not made."""
        path = self.file(name)
        return check_fields(str(path), read_json(path), RESULTS_FIELDS) if path.exists() else None
    def calibration(self) -> dict | None:
        """calibration.json, or None when the run has not been calibrated; the temperature must be
        a positive finite number, since predict and serve divide logits by it."""
        path = self.file(CALIBRATION)
        if not path.exists():
            return None
        calibration = check_fields(str(path), read_json(path), CALIBRATION_FIELDS)
        temperature = calibration.get("temperature")
        if not (_is_number(temperature) and math.isfinite(temperature) and temperature > 0):
            raise RunError(f"{path}: temperature should be a positive number, found {temperature!r:.60}")
        return calibration

    def status(self) -> dict:
        path = self.file(STATUS)
        return check_fields(str(path), read_json(path), STATUS_FIELDS) if path.exists() else {"status": "unknown"}

    def write_status(self, status: str, **info) -> None:
        atomic_write_json(self.file(STATUS), {"status": status, "pid": os.getpid(), **info})

    # ------------------------------------------------------------ what a training writes

    def start(self, facts: dict) -> None:
        """A new run: config.json (the config and the facts of its data and device), no epochs yet."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.file(CONFIG), facts)
        self.file(METRICS).write_text("")

    def append_epoch(self, record: dict) -> None:
        append_jsonl(self.file(METRICS), record)

    def rewrite_metrics(self, history: list[dict]) -> None:
        """metrics.jsonl as the checkpoint's history has it (a resume drops epochs it never saved)."""
        atomic_write_bytes(self.file(METRICS), "".join(json.dumps(h) + "\n" for h in history).encode())

    def has_checkpoint(self) -> bool:
        return self.file(CHECKPOINT).exists()

    def save_checkpoint(self, state: dict) -> None:
        atomic_torch_save(self.file(CHECKPOINT), state)

    def load_training_state(self) -> dict:
        return load_training_state(self.file(CHECKPOINT), map_location="cpu")

    def write_results(self, results: dict) -> None:
        atomic_write_json(self.file(RESULTS), results)

    def tensorboard_dir(self) -> Path:
        return self.file(TENSORBOARD)

    def describe_config(self) -> str:
        return str(self.file(CONFIG))

    def describe_checkpoint(self) -> str:
        return str(self.file(CHECKPOINT))

    def describe_results(self) -> str:
        return str(self.file(RESULTS))

    # ------------------------------------------------------------ who trains the run

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold RUNDIR/.lock for the life of a training (creating the folder if need be).

        A second training into the folder, or a --resume of it, from any process, is then a
        one-line RunError, and `runs` tells a live run from a dead one whose PID was reused. The
        kernel drops an flock when its process dies, however it dies: no stale lock outlives a
        run. The file says who holds it (pid, host, start time), for those messages. A training
        that fails before writing anything leaves the folder as it found it.
        """
        created = not self.path.exists()
        fd = self._acquire_lock()
        try:
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(holder) + "\n").encode())
            yield
        finally:
            self._remove_lock_if_alone(created)
            os.close(fd)  # lets go of the flock

    def _remove_lock_if_alone(self, created: bool) -> None:
        """Remove the lock file (while still holding it: a waiting training then locks a new one),
        and the folder if this training created it, when the training wrote nothing else."""
        with contextlib.suppress(OSError):
            if os.listdir(self.path) == [LOCK]:
                self.file(LOCK).unlink()
                if created:
                    self.path.rmdir()

    def _acquire_lock(self) -> int:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:  # a file in the way, no permission, a read-only disk
                raise RunError(f"{self.file(LOCK)}: cannot create it ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() > deadline:
                    raise RunError(self.busy_message()) from None
                time.sleep(0.05)
                continue
            except OSError as e:
                os.close(fd)
                raise RunError(f"{self.file(LOCK)}: cannot lock it ({e.strerror}); this filesystem may not support locks") from None
            if self._still_the_lock_file(fd):
                return fd
            os.close(fd)  # its holder removed it as it let go: lock the file now there

    def _still_the_lock_file(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.file(LOCK)))
        except FileNotFoundError:
            return False

    def lock_held(self) -> bool | None:
        """Whether a training holds this run's lock now; None when there is no lock file to ask
        (a run from before run locks) or it cannot be opened."""
        try:
            fd = os.open(self.file(LOCK), os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # let go at once, by the close below
        except BlockingIOError:
            return True
        except OSError:
            return None
        finally:
            os.close(fd)
        return False

    def busy_message(self) -> str:
        try:
            holder = json.loads(self.file(LOCK).read_text())
            who = f" (pid {holder['pid']} on {holder['host']}, started {holder['started']})"
        except (OSError, ValueError, TypeError, KeyError):
            who = ""  # the holder has not written it yet
        return f"{self.path}: a training is running in this folder{who}; wait for it to end or stop it first"

    # ------------------------------------------------------------ starting a run here

    def check_new_run(self) -> None:
        """RunError unless a new training may start here: a folder that does not exist, is empty, or
        holds a run killed before it saved its first epoch (whose files the new run overwrites).
        Nothing else is ever overwritten: not a run with a checkpoint, not a folder of other files."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise RunError(f"{self.path}: is a file, not a folder for a run")
        names = self.entries()
        if not names:
            return
        if CONFIG not in names:
            raise RunError(f"{self.path}: holds {_listing(names)} but is not a cifarlab run; choose another --out")
        if CHECKPOINT in names or RESULTS in names:
            if self.lock_held():
                raise RunError(self.busy_message())
            raise RunError(f"{self.path}: already holds a run; pass --resume to continue it or choose another --out")
        self.check_restartable()

    def check_restartable(self) -> None:
        """RunError unless this is a run killed before its first checkpoint holding only what a
        training writes, so that starting it again loses nothing."""
        foreign = sorted(set(self.entries()) - set(TRAINING_FILES))
        if foreign:
            raise RunError(f"{self.path}: a run that saved no epoch, but the folder also holds {_listing(foreign)}; "
                           "move them away or choose another --out")
        self.config()  # someone else's config.json is not ours to overwrite
        records, _ = self.metrics()
        saved = len(records) or self.status().get("epoch") or 0
        if saved:
            epochs = f"{saved} finished epoch" + ("s" if saved != 1 else "")
            raise RunError(f"{self.path}: records {epochs} but has no {CHECKPOINT} to resume from; choose another --out")

    def entries(self) -> list[str]:
        """The folder's entries but the lock and the temporaries of a write a kill interrupted."""
        return sorted(n for n in os.listdir(self.path) if n != LOCK and not self._is_temporary(n))

    @staticmethod
    def _is_temporary(name: str) -> bool:
        return any(_is_temporary_of(name, target) for target in TRAINING_FILES)

    def remove_temporaries(self) -> list[str]:
        """Delete the temporary files of atomic writes a kill interrupted (e.g. `.checkpoint.pt.*.tmp`).
        Only under the lock: then no training is writing one."""
        stale = sorted(n for n in os.listdir(self.path) if self._is_temporary(n))
        for name in stale:
            self.file(name).unlink(missing_ok=True)
        return stale


def _listing(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------- what a run's history says

STABLE_BAND = 0.005  # validation accuracy within 0.5 points of its final value counts as stabilised


def seconds_to_stabilise(history: list[dict]) -> tuple[int | None, float | None]:
    """First epoch after which validation accuracy stays within STABLE_BAND of its final value,
    and the cumulative seconds at the end of that epoch. (None, None) without validation."""
    accs = [h.get("val_accuracy") for h in history]
    if not accs or accs[-1] is None:
        return None, None
    final = accs[-1]
    stable = len(accs) - 1
    while stable > 0 and abs(accs[stable - 1] - final) <= STABLE_BAND:
        stable -= 1
    return history[stable]["epoch"], history[stable]["elapsed_seconds"]


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
    problem = _checkpoint_problem(state)
    if problem:
        raise RunError(f"{path}: {problem}")
    return state


def _checkpoint_problem(state: Any) -> str | None:
    """What makes a loaded object unusable as a checkpoint by predict, export, serve or evaluate."""
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        return "not a cifarlab checkpoint (no model state or metadata)"
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        return f"not a cifarlab checkpoint (its model state should be named tensors, found {json_kind(weights)})"
    for key, kind, name in (("meta", dict, "a table"), ("config", dict, "a table"), ("history", list, "a list"), ("epoch", int, "an integer")):
        if key in state and not isinstance(state[key], kind):
            return f"its {key} should be {name}, found {json_kind(state[key])}"
    return None


def load_training_state(path: Path | str, map_location="cpu") -> dict:
    """A checkpoint with everything a resume restores, its history checked as metrics.jsonl is."""
    state = load_checkpoint(path, map_location)
    path = checkpoint_path(path)
    for key in ("optimizer", "schedule", "rng", "history"):
        if key not in state:
            raise RunError(f"{path}: lacks the {key} state a resume needs (a weights-only checkpoint?)")
    for key in ("optimizer", "schedule", "rng"):
        if not isinstance(state[key], dict):
            raise RunError(f"{path}: its {key} state should be a table, found {json_kind(state[key])}")
    for n, record in enumerate(state["history"], 1):
        check_epoch_record(record, f"{path}: history entry {n}", required=tuple(EPOCH_FIELDS))
    if state.get("epoch") != len(state["history"]):
        raise RunError(f"{path}: says epoch {state.get('epoch')} but holds {len(state['history'])} epochs of history")
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


def checked_metadata(meta: Any, source: str) -> dict:
    """The metadata, with channels_last defaulted, or RunError naming the field that is unusable."""
    missing = [k for k in META_KEYS if k not in meta] if isinstance(meta, dict) else list(META_KEYS)
    if missing:
        raise RunError(f"{source}: checkpoint metadata lacks {', '.join(missing)}")
    problem = _metadata_problem(meta)
    if problem:
        raise RunError(f"{source}: checkpoint metadata {problem}")
    return {**meta, "channels_last": meta.get("channels_last", False)}


def _metadata_problem(meta: dict) -> str | None:
    classes, model_options = meta["classes"], meta["model_options"]
    if not isinstance(meta["model"], str):
        return f"model should be a name, found {json_kind(meta['model'])}"
    if not isinstance(model_options, dict) or not all(isinstance(k, str) for k in model_options):
        return f"model_options should be a table of options, found {json_kind(model_options)}"
    if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) and c for c in classes):
        return f"classes should be a list of class names, found {json_kind(classes)}"
    if len(set(classes)) != len(classes):
        return "classes names a class twice"
    for key in ("mean", "std"):
        values = meta[key]
        if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(_is_number(v) and math.isfinite(v) for v in values):
            return f"{key} should be 3 numbers (one per colour channel), found {values!r:.60}"
    if not all(v > 0 for v in meta["std"]):
        return f"std should be 3 positive numbers (inputs are divided by it), found {meta['std']!r}"
    if not isinstance(meta.get("channels_last", False), bool):
        return f"channels_last should be true/false, found {json_kind(meta['channels_last'])}"
    return None


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
    """Load the weights (only) of a run's checkpoint into `model` for a warm start; returns what
    config.json records about the source. One-line errors when the shapes do not fit."""
    ckpt = checkpoint_path(source)
    state = load_checkpoint(ckpt)
    try:
        model.load_state_dict(state["model"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise RunError(f"--init-from {ckpt}: its weights do not fit this model: {first_problem(e)}") from None
    return {"checkpoint": str(ckpt.resolve()), "epoch": state.get("epoch"), "model": state["meta"].get("model")}


def first_problem(error: BaseException) -> str:
    """One line for a model-building error; load_state_dict's first line is only a heading."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        return lines[1] + more
    return lines[0]
