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

A model exported to travel (`cifarlab export --format safetensors`, common/exported.py) is a
folder of its own, by default RUNDIR/safetensors/:

    EXPORT/model.safetensors  the weights
    EXPORT/config.json        what rebuilds the model and feeds it (model, options, classes, normalisation)
    EXPORT/README.md          the model card
    EXPORT/evaluation.json    written by `cifarlab evaluate EXPORT`, as in a run

Every file but metrics.jsonl is written atomically (common/files.py), so a run killed at any
moment leaves either the old file or the new one, never half of one. Every JSON file is read
and written through its schema (common/runfiles.py), so a damaged or hand-edited file is a
one-line RunError naming the file (and field), never a traceback or a wrong figure further on.
Checkpoints (common/checkpoint.py) hold only tensors and plain Python values.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from cifarlab.common import runfiles
from cifarlab.common.files import (
    TEMPORARY,
    RunError,
    atomic_torch_save,
    atomic_write_bytes,
    read_json,
    remove_stale_temporaries,
    try_lock,
    writing,
)

CONFIG, METRICS, CHECKPOINT, STATUS, RESULTS, EVALUATION, CALIBRATION, ROBUSTNESS = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "status.json",
    "results.json",
    "evaluation.json",
    "calibration.json",
    "robustness.json",
)
LOCK = ".lock"
TENSORBOARD = "tensorboard"  # the event files of `train --tensorboard`
# The exported folder. Its config file shares the run's name on purpose: config.json is what
# model hubs look for. A run is told apart by its 'train' section, an export by its 'format'.
EXPORT_DIR, EXPORT_WEIGHTS, EXPORT_CONFIG, EXPORT_CARD = "safetensors", "model.safetensors", CONFIG, "README.md"
TRAINING_FILES = (CONFIG, METRICS, CHECKPOINT, STATUS, RESULTS)  # what a training writes, and may write again
LOCK_WAIT_SECONDS = 1.0  # outwaits a `runs` that only looks at the lock (microseconds), never a training (hours)
MEASUREMENTS: dict[str, type[runfiles.Schema]] = {EVALUATION: runfiles.Evaluation, ROBUSTNESS: runfiles.Robustness, CALIBRATION: runfiles.Calibration}


class RunDir:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        return self.file(CONFIG).is_file()

    def holds_run(self) -> bool:
        """Whether config.json here is a run's rather than an export's (which has a 'format') or
        absent. A damaged one counts as a run's, so that its reader says what is wrong with it."""
        try:
            return self.exists() and "format" not in read_json(self.file(CONFIG))
        except RunError:
            return True

    def require(self) -> RunDir:
        if not self.path.is_dir():
            raise RunError(f"{self.path}: no such run directory")
        if not self.exists():
            raise RunError(f"{self.path}: not a run directory (no {CONFIG})")
        return self

    def config(self) -> dict:
        """config.json, its shape checked (training.config.read_run_config checks its train section
        field by field too: what every command reading a run uses)."""
        path = self.file(CONFIG)
        config = read_json(path)
        if not isinstance(config.get("train"), dict):
            raise RunError(f"{path}: not a cifarlab run config (no 'train' section)")
        return runfiles.check(runfiles.RunConfig, config, str(path))

    def metrics(self) -> tuple[list[dict], bool]:
        return runfiles.read_metrics(self.file(METRICS))

    def results(self) -> dict | None:
        return runfiles.read_optional(runfiles.Results, self.file(RESULTS))

    def measured(self, name: str) -> dict | None:
        """A measurement's JSON object (EVALUATION, ROBUSTNESS, CALIBRATION), or None when not made."""
        return runfiles.read_optional(MEASUREMENTS[name], self.file(name))

    def calibration(self) -> dict | None:
        """calibration.json, or None when the run has not been calibrated; its temperature lies in
        the range calibrate searches, since predict and serve divide logits by it."""
        return self.measured(CALIBRATION)

    def status(self) -> dict:
        return runfiles.read_optional(runfiles.Status, self.file(STATUS)) or {"status": "unknown"}

    def write_status(self, status: str, **info) -> None:
        runfiles.write(runfiles.Status, self.file(STATUS), {"status": status, "pid": os.getpid(), **info})

    def write_measured(self, name: str, value: dict) -> Path:
        """Write a measurement (EVALUATION, ROBUSTNESS, CALIBRATION) through its schema; returns its path."""
        runfiles.write(MEASUREMENTS[name], self.file(name), value)
        return self.file(name)

    # ------------------------------------------------------------ what a training writes

    def start(self, facts: dict) -> None:
        """A new run: config.json (the config and the facts of its data and device), no epochs yet."""
        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        runfiles.write(runfiles.RunConfig, self.file(CONFIG), facts)
        atomic_write_bytes(self.file(METRICS), b"")

    def append_epoch(self, record: dict) -> None:
        runfiles.append_metric(self.file(METRICS), record)

    def rewrite_metrics(self, history: list[dict]) -> None:
        """metrics.jsonl as the checkpoint's history has it (a resume drops epochs it never saved)."""
        runfiles.write_metrics(self.file(METRICS), history)

    def has_checkpoint(self) -> bool:
        return self.file(CHECKPOINT).exists()

    def save_checkpoint(self, state: dict) -> None:
        atomic_torch_save(self.file(CHECKPOINT), state)

    def write_results(self, results: dict) -> None:
        runfiles.write(runfiles.Results, self.file(RESULTS), results)

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
            with writing(self.file(LOCK)):  # a full disk: a one-line error naming the lock file
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
                locked = try_lock(fd)
            except OSError as e:
                os.close(fd)
                raise RunError(f"{self.file(LOCK)}: cannot lock it ({e.strerror}); this filesystem may not support locks") from None
            if not locked:
                os.close(fd)
                if time.monotonic() > deadline:
                    raise RunError(self.busy_message()) from None
                time.sleep(0.05)
                continue
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
            return not try_lock(fd, shared=True)  # let go at once, by the close below
        except OSError:
            return None
        finally:
            os.close(fd)

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
            raise RunError(
                f"{self.path}: a run that saved no epoch, but the folder also holds {_listing(foreign)}; move them away or choose another --out"
            )
        self.config()  # someone else's config.json is not ours to overwrite
        records, _ = self.metrics()
        saved = len(records) or self.status().get("epoch") or 0
        if saved:
            epochs = f"{saved} finished epoch" + ("s" if saved != 1 else "")
            raise RunError(f"{self.path}: records {epochs} but has no {CHECKPOINT} to resume from; choose another --out")

    def entries(self) -> list[str]:
        """The folder's entries but the lock and the temporaries of a write a kill interrupted."""
        return sorted(n for n in os.listdir(self.path) if n != LOCK and not TEMPORARY.match(n))

    def remove_temporaries(self) -> list[str]:
        """Delete the temporaries of writes a kill interrupted (e.g. `.checkpoint.pt.*.tmp`)."""
        return remove_stale_temporaries(self.path)


def _listing(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


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
