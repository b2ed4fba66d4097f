"""Reading run directories for display: one run's files as a `RunView`, and the runs under a
folder as table rows for `cifarlab runs`.

A run is "running" while a training holds its lock (RUNDIR/.lock), whatever status.json says
and whatever process now has the PID it recorded. A status.json that says "running" without
that means the process died without saying so (killed, machine rebooted): the run is shown as
"stopped". One run whose files are damaged is reported and skipped; it does not stop the listing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarlab.common.files import RunError
from cifarlab.common.rundir import CHECKPOINT, CONFIG, METRICS, RunDir, seconds_to_stabilise
from cifarlab.training.config import read_run_config

COLUMNS = ("name", "preset", "model", "params", "epochs", "best_val_accuracy", "test_accuracy", "train_seconds", "status")


@dataclass
class RunView:
    """What a run directory holds right now, read once."""

    path: Path
    config: dict  # config.json
    metrics: list[dict]  # complete epoch records
    partial: bool  # metrics.jsonl ended in a line cut short (a run killed mid-write)
    status: str  # finished / running / stopped / failed / unknown, after the dead-process check
    reason: str | None
    results: dict | None  # results.json, present once a run finished

    @property
    def train(self) -> dict:
        return self.config.get("train", {})

    @property
    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).is_file()

    def best_val_accuracy(self) -> float | None:
        vals = [v for m in self.metrics if (v := m.get("val_accuracy")) is not None]
        return max(vals) if vals else None

    def final_val_accuracy(self) -> float | None:
        return self.metrics[-1].get("val_accuracy") if self.metrics else None

    def train_seconds(self) -> float | None:
        if self.results:
            return self.results.get("train_seconds")
        return self.metrics[-1].get("elapsed_seconds") if self.metrics else None

    def stabilised(self) -> tuple[int | None, float | None]:
        """The report's "time for the accuracy to stabilise" (epoch, seconds): results.json's once the
        run finished, else from the metrics so far."""
        if self.results:
            return self.results.get("stabilised_epoch"), self.results.get("seconds_to_stabilise")
        return seconds_to_stabilise(self.metrics) if self.metrics else (None, None)


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def load_run(path: Path | str) -> RunView:
    """Read a run directory; RunError (one line, naming the file) if it is not one."""
    run = RunDir(path).require()
    config = read_run_config(run.path)  # checked as a resume checks it
    metrics, partial = run.metrics()
    status = run.status()
    state = status.get("status", "unknown")
    reason = status.get("reason")
    if is_training(run, status):
        state, reason = "running", None
    elif state == "running":
        state, reason = "stopped", f"its training process {status.get('pid')} is gone (killed or crashed)"
    return RunView(run.path, config, metrics, partial, state, reason, run.results())


def is_training(run: RunDir, status: dict) -> bool:
    """Whether a training process is working on the run right now: its lock is held. A run from
    before run locks has only its status.json's pid to go by."""
    held = run.lock_held()
    if held is None:
        return status.get("status") == "running" and pid_alive(status.get("pid"))
    return held


def run_row(view: RunView, root: Path | None = None) -> dict:
    """One row of `cifarlab runs`."""
    name = str(view.path.relative_to(root)) if root is not None and view.path != root else view.path.name
    results = view.results or {}
    planned = view.train.get("epochs")
    return {
        "name": name,
        "preset": view.train.get("preset"),
        "model": view.train.get("model"),
        "params": results.get("params", view.config.get("params")),
        "epochs": len(view.metrics),
        "planned_epochs": planned,
        "best_val_accuracy": results.get("best_val_accuracy", view.best_val_accuracy()),
        "test_accuracy": results.get("test_accuracy"),
        "train_seconds": view.train_seconds(),
        "status": view.status,
        "reason": view.reason,
        "path": str(view.path),
    }


def find_runs(folder: Path | str) -> list[Path]:
    """Every run directory at or below `folder` (a directory holding config.json), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"{folder}: no such folder")
    return sorted(p.parent for p in folder.rglob(CONFIG) if (p.parent / METRICS).exists() or (p.parent / CHECKPOINT).exists())


def list_runs(folder: Path | str, sort: str = "name", reverse: bool = False, warn: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Table rows for the runs under `folder`, sorted by a column (missing values last)."""
    if sort not in COLUMNS:
        raise RunError(f"unknown column {sort!r}; columns: {', '.join(COLUMNS)}")
    rows = []
    for path in find_runs(folder):
        try:
            rows.append(run_row(load_run(path), Path(folder)))
        except RunError as e:
            warn(f"skipped: {e}")
    present = [r for r in rows if r[sort] is not None]
    missing = [r for r in rows if r[sort] is None]
    present.sort(key=lambda r: (r[sort], r["name"]), reverse=reverse)
    return present + missing


def format_runs(rows: list[dict]) -> str:
    """The rows as an aligned text table."""
    header = ["name", "preset", "model", "params", "epochs", "best val", "test acc", "train time", "status"]
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    lines = [
        [
            r["name"],
            str(r["preset"]),
            str(r["model"]),
            "-" if r["params"] is None else f"{r['params']:,}",
            f"{r['epochs']}/{r['planned_epochs']}",
            pct(r["best_val_accuracy"]),
            pct(r["test_accuracy"]),
            "-" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}s",
            r["status"],
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    right = {3, 4, 5, 6, 7}
    render = lambda cells: "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join(render(c).rstrip() for c in [header, *lines]) if lines else "no runs found"


def runs_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)


def flatten_config(view: RunView) -> dict[str, object]:
    """The run's settings as one flat mapping: TrainConfig fields (model options dotted) and data facts."""
    flat: dict[str, object] = {}
    for key, value in view.train.items():
        if key == "model_options" and isinstance(value, dict):
            flat.update({f"model_options.{k}": v for k, v in sorted(value.items())})
        else:
            flat[key] = value
    for key in ("train_subset", "train_images", "val_images", "data", "device", "torch_version"):
        if key in view.config:
            flat[key] = view.config[key]
    return flat
