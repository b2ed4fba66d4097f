"""Helpers of benchmarks/attacks.py: running the CLI, classing what came back, the shared run and its copies."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # conftest's tiny-data writer
from cifarlab.data import ANY_RECORD_COUNT_ENV  # noqa: E402
from conftest import write_binary  # noqa: E402

TIMEOUT_S = 120
TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
BAD = ("traceback", "hang", "crash", "wrong result", "data lost", "left behind", "breach")
ENV = {**os.environ, ANY_RECORD_COUNT_ENV: "1", "PYTHONPATH": str(REPO / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
TRAIN = ["train", "--preset", "quick", "--epochs", "1", "--train-subset", "200", "--val-size", "50", "--tta", "0", "--quiet"]


@dataclass(frozen=True)
class Proc:
    command: list[str]
    rc: int | None  # None: timed out
    out: str
    err: str


@dataclass
class Outcome:
    name: str
    family: str
    expected: str
    command: str = ""
    kind: str = ""
    stderr: str = ""  # the first line of stderr
    stderr_tail: list[str] = field(default_factory=list)  # its last lines, for a traceback
    detail: str = ""


@dataclass(frozen=True)
class Attack:
    name: str
    family: str
    expected: str  # "one-line error", "proper" or "either"
    run: Callable[[Context], Verdict]


@dataclass
class Verdict:
    proc: Proc | None = None
    problems: list[str] = field(default_factory=list)  # each makes a "wrong result"
    kind: str | None = None  # forces a class (data lost, breach, left behind, ...)
    detail: str = ""


def run_cli(*args, cwd: Path | None = None, timeout: int = TIMEOUT_S, prefix: list[str] | None = None) -> Proc:
    command = [*(prefix or []), sys.executable, "-m", "cifarlab", *map(str, args)]
    proc = subprocess.Popen(
        command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return Proc(command, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Proc(command, None, out, err)


def base_class(proc: Proc) -> str:
    if proc.rc is None:
        return "hang"
    if proc.rc < 0:
        return "crash"
    if "Traceback" in proc.err:
        return "traceback"
    return "one-line error" if proc.rc else "proper"


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of each visible file under folder: equal before and after a failed command means nothing lost."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if TEMPORARY.match(p.name))


class Context:
    """The shared temporary folder: tiny data, test images, the trained run and copies of it."""

    def __init__(self, root: Path):
        self.root = root
        self.data = write_binary(root / "data", per_batch=60, test=40).parent
        self.count = 0

    def fresh(self, label: str) -> Path:
        self.count += 1
        return self.root / f"{self.count:03d}-{label}"

    @cached_property
    def run(self) -> Path:
        proc = run_cli(*TRAIN, "--data-dir", self.data, "--out", self.root / "run")
        if proc.rc != 0:
            raise SystemExit(f"the shared run failed: {proc.err.strip()[-400:]}")
        return self.root / "run"

    def run_copy(self, label: str) -> Path:
        target = self.fresh(label)
        shutil.copytree(self.run, target, ignore=shutil.ignore_patterns("safetensors", "*.onnx*"))
        return target

    @cached_property
    def calibrated(self) -> Path:
        run = self.run_copy("calibrated")
        assert run_cli("calibrate", run, "--data-dir", self.data).rc == 0
        return run

    @cached_property
    def export(self) -> Path:
        run = self.run_copy("exported")
        assert run_cli("export", run, "--format", "safetensors", "--data-dir", self.data).rc == 0
        return run / "safetensors"

    def export_copy(self, label: str) -> Path:
        target = self.fresh(label)
        shutil.copytree(self.export, target)
        return target

    @cached_property
    def images(self) -> Path:
        from PIL import Image

        folder = self.root / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        return folder

    def sweep_spec(self, body: str, name: str = "spec") -> Path:
        path = self.fresh(name).with_suffix(".toml")
        head = 'base = "quick"\ntrain_subset = 100\n[fixed]\nepochs = 1\nval_size = 20\ntta = 0\n'
        path.write_text(head + body)
        return path


def checked(proc: Proc, *problems: tuple[bool, str]) -> Verdict:
    """A verdict whose problems are those of `problems` whose condition holds."""
    return Verdict(proc, [text for bad, text in problems if bad])


def kept(folder: Path, proc: Proc, before: dict[str, str]) -> Verdict:
    """A failed command must leave every run file as it was."""
    changed = [k for k, v in before.items() if snapshot(folder).get(k) != v]
    return Verdict(proc, kind="data lost" if changed else None, detail=f"changed: {changed}" if changed else "")


def refused_quietly(proc: Proc) -> Verdict:
    """A case that must be refused: exit 0 is a wrong result."""
    return checked(proc, (proc.rc == 0, "accepted a value it must refuse"))


def judge(ctx: Context, item: Attack) -> Outcome:
    outcome = Outcome(item.name, item.family, item.expected)
    try:
        verdict = item.run(ctx)
    except Exception as exc:  # the attack's own in-process call (TestClient, create_app) raised
        from cifarlab.errors import CifarlabError

        one_line = isinstance(exc, CifarlabError)
        outcome.kind = "one-line error" if one_line else "traceback"
        outcome.stderr = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        outcome.command = "(in process)"
        return outcome
    proc = verdict.proc
    if proc is not None:
        outcome.command = (
            " ".join(a if len(a) < 120 else a[:60] + "..." for a in proc.command[proc.command.index("cifarlab") :])
            if "cifarlab" in proc.command
            else " ".join(proc.command)
        )
        lines = [line for line in proc.err.splitlines() if line.strip()]
        outcome.stderr = lines[0][:300] if lines else ""
        outcome.stderr_tail = [line[:300] for line in lines[-4:]] if "Traceback" in proc.err else []
    outcome.kind = verdict.kind or (base_class(proc) if proc else "proper")
    if verdict.problems and outcome.kind in ("proper", "one-line error"):
        outcome.kind = "wrong result"
    outcome.detail = verdict.detail or "; ".join(verdict.problems)
    return outcome
