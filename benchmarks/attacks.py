"""Replay issue 20's attacks (and a sample of earlier ones) through the real command line.

    PYTHONPATH=src python benchmarks/attacks.py [--only NAME_PART ...] [--out FILE.json]

Tiny fake CIFAR-10 files and one small run (quick preset, 1 epoch, 200 images) are made once in a
temporary folder; every attack works on its own copy. Each command runs as `python -m cifarlab ...`
in a subprocess and is classed by what came back:

- hang: no answer within TIMEOUT_S; crash: killed by a signal; traceback: "Traceback" on stderr;
- one-line error: a non-zero exit with a message; proper: exit 0 and the output checks hold;
- wrong result: an output check failed (nan%, raw HTML in the model card, a refused case that ran ...);
- data lost: a run file present before a failed command changed; left behind: a hidden temporary
  remains after the next successful write; breach: a pickle payload ran or a path escaped.

Read-only folders and full disks are real: a read-only bind mount and a small tmpfs in a private
mount namespace (`unshare -m`, which needs root). The service attacks use FastAPI's TestClient.
Results: benchmarks/results/attacks.json and a table by class.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from attack_tools import (
    BAD,
    ENV,
    REPO,
    TEMPORARY,
    TRAIN,
    Attack,
    Context,
    Proc,
    Verdict,
    base_class,
    checked,
    judge,
    kept,
    leftovers,
    refused_quietly,
    run_cli,
    snapshot,
)

ATTACKS: list[Attack] = []


def attack(family: str, name: str, expected: str = "one-line error"):
    def register(fn):
        ATTACKS.append(Attack(name, family, expected, fn))
        return fn

    return register


# ---------------------------------------------------------------- helpers of the cases

EVIL_CLASSES = [
    "<script>alert(0)</script>",
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(2))",
    "![t](http://evil.example/t.png)",
    "<!-- hide",
    "a\n---\nb: 1",
    "cat",
    "dog",
    "ship",
    "truck",
]
RAW = ("<script", "<img", "<!--", "](javascript:", "](http")  # escaped (&lt;img, \]\(javascript:) is harmless


def with_classes(ctx: Context, classes: list[str]) -> Path:
    import torch

    run = ctx.run_copy("classes")
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint["meta"]["classes"] = classes
    torch.save(checkpoint, run / "checkpoint.pt")
    return run


def card_problems(card: Path) -> list[str]:
    import yaml

    text = card.read_text()
    problems = [f"raw {raw!r} in the card" for raw in RAW if raw in text]
    parts = text.split("---\n", 2)
    try:
        front = yaml.safe_load(parts[1]) if text.startswith("---\n") and len(parts) == 3 else None
        if not isinstance(front, dict):
            problems.append("no YAML front matter mapping")
    except yaml.YAMLError as exc:
        problems.append(f"front matter does not parse: {str(exc).splitlines()[0]}")
    return problems


def exported_card(proc: Proc, run: Path) -> Verdict:
    card = run / "safetensors" / "README.md"
    if proc.rc != 0 or not card.exists():
        return Verdict(proc)
    return Verdict(proc, card_problems(card))


def html_problems(folder: Path) -> list[str]:
    pages = list(folder.rglob("*.html"))
    text = "".join(p.read_text(errors="replace") for p in pages)
    return [f"raw {raw!r} in {folder.name}/*.html" for raw in ("<script>alert(0)", "<img src=x onerror") if raw in text]


def in_namespace(setup: str, *args, after: str = "") -> Proc:
    """The CLI in a private mount namespace, after `setup` (mounts), then `after` (checks inside it)."""
    script = f'{setup} || exit 90; "$0" "$@"; rc=$?; {after or "true"}; exit $rc'
    return run_cli(*args, prefix=["unshare", "-m", "sh", "-c", script])


def read_only(ctx: Context, *args, folder: Path) -> Verdict:
    before = snapshot(folder)
    proc = in_namespace(f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder}", *args)
    return kept(folder, proc, before)


def full_disk(ctx: Context, args_of: Callable[[Path], list]) -> Verdict:
    """The run copied onto a tmpfs filled to the last byte; its files hashed before and after, inside."""
    mount, outside = ctx.fresh("full"), ctx.fresh("full-report")
    mount.mkdir(), outside.mkdir()
    run = mount / "run"
    hashes = f"(cd {run} && find . -maxdepth 1 -type f ! -name '.*' | sort | xargs sha256sum)"
    setup = (
        f"mount -t tmpfs -o size=48m tmpfs {mount} && cp -r {ctx.run} {run} && {hashes} > {outside}/before"
        f" && (dd if=/dev/zero of={mount}/fill bs=64k 2>/dev/null; true)"
    )
    after = f"{hashes} > {outside}/after; ls -A {run} > {outside}/listing"
    proc = in_namespace(setup, *args_of(run), after=after)
    if proc.rc == 90:
        return Verdict(proc, kind="crash", detail="the tmpfs could not be set up")
    lost = (outside / "before").read_text() != (outside / "after").read_text()
    left = [n for n in (outside / "listing").read_text().split() if TEMPORARY.match(n)]
    return Verdict(proc, kind="data lost" if lost else ("left behind" if left else None), detail=f"left {left}" if left else "")


def stale_temporary(folder: Path, name: str, is_folder: bool = False) -> Path:
    """What a writer killed mid-write leaves: .NAME.RANDOM.tmp, old enough to be nobody's."""
    path = folder / f".{name}.deadbeef.tmp"
    if is_folder:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"half")
    else:
        path.write_bytes(b"half written")
    os.utime(path, (time.time() - 60, time.time() - 60))
    return path


def no_leftover(proc: Proc, folder: Path) -> Verdict:
    left = leftovers(folder)
    return Verdict(proc, kind="left behind" if left and proc.rc == 0 else None, detail=f"left {left}" if left else "")


def deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


class Payload:
    """A pickle that, when loaded, creates MARKER: the file must never appear."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickled_checkpoint(ctx: Context) -> tuple[Path, Path]:
    run = ctx.run_copy("pickle")
    marker = ctx.root / f"PAYLOAD-RAN-{run.name}"
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"model": Payload(marker)}))
    return run, marker


def payload_verdict(proc: Proc, marker: Path) -> Verdict:
    if marker.exists():
        return Verdict(proc, kind="breach", detail="the pickle payload ran")
    return checked(proc, ("weights_only=False" in proc.err, "advises weights_only=False"))


def serve_client(checkpoint: Path, **options):
    from fastapi.testclient import TestClient

    from cifarlab.serve.app import create_app

    return TestClient(create_app(checkpoint, **options))


def png_bytes(ctx: Context) -> bytes:
    return (ctx.images / "img0.png").read_bytes()


def served_status(ctx: Context, checkpoint: Path, path: str = "/predict", files=None, **options) -> Verdict:
    with serve_client(checkpoint, **options) as client:
        response = client.post(path, files=files if files is not None else {"file": ("a.png", png_bytes(ctx), "image/png")})
    problems = [f"answered {response.status_code}: {response.text[:160]}"] if response.status_code >= 500 else []
    if response.status_code == 200 and "nan" in response.text.lower():
        problems.append("nan in the answer")
    return Verdict(None, problems, detail=f"HTTP {response.status_code}")


# ---------------------------------------------------------------- injection (3 families)


@attack("injection", "card: hostile class names (script, img onerror, javascript:, remote image, <!--, newline ---)", "either")
def _(ctx):
    run = with_classes(ctx, EVIL_CLASSES)
    return exported_card(run_cli("export", run, "--format", "safetensors", "--data-dir", ctx.data), run)


@attack("injection", "card: free-text config field --set preset=<img onerror>", "either")
def _(ctx):
    run = ctx.fresh("preset-img")
    proc = run_cli(*TRAIN, "--data-dir", ctx.data, "--out", run, "--set", 'preset="<img src=x onerror=alert(1)>"')
    if proc.rc != 0:
        return Verdict(proc)
    return exported_card(run_cli("export", run, "--format", "safetensors", "--data-dir", ctx.data), run)


@attack("injection", "report and compare: hostile class names", "either")
def _(ctx):
    run = with_classes(ctx, EVIL_CLASSES)
    proc = run_cli("report", run, "--data-dir", ctx.data, "--quiet")
    out = ctx.fresh("compare")
    proc2 = run_cli("compare", ctx.run, run, "--out", out, "--data-dir", ctx.data, "--quiet")
    worst = proc2 if base_class(proc2) in BAD else proc
    return Verdict(worst, html_problems(run) + (html_problems(out) if out.exists() else []))


# ---------------------------------------------------------------- wrong answers (14)


def relabelled_export(ctx: Context) -> Path:
    import hashlib

    export = ctx.export_copy("i32")
    weights = export / "model.safetensors"
    data = bytearray(weights.read_bytes())
    size = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + size].decode().replace('"F32"', '"I32"', 1).encode()
    data[8 : 8 + size] = header
    weights.write_bytes(bytes(data))
    config = json.loads((export / "config.json").read_text())
    config["weights"]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (export / "config.json").write_text(json.dumps(config))
    return export


@attack("wrong answer", "safetensors dtype relabelled I32: predict")
def _(ctx):
    return refused_quietly(run_cli("predict", relabelled_export(ctx), ctx.images, "--quiet"))


@attack("wrong answer", "safetensors dtype relabelled I32: evaluate")
def _(ctx):
    export = relabelled_export(ctx)
    proc = run_cli("evaluate", export, "--data-dir", ctx.data)
    return checked(proc, (proc.rc == 0, "accepted"), ((export / "evaluation.json").exists(), "wrote evaluation.json"))


@attack("wrong answer", "safetensors dtype relabelled I32: serve")
def _(ctx):
    return served_status(ctx, relabelled_export(ctx))


def tiny_temperature(ctx: Context) -> Path:
    run = ctx.run_copy("t1e-300")
    calibration = json.loads((ctx.calibrated / "calibration.json").read_text())
    (run / "calibration.json").write_text(json.dumps({**calibration, "temperature": 1e-300}))
    return run


@attack("wrong answer", "calibration temperature 1e-300: predict --calibrated")
def _(ctx):
    proc = run_cli("predict", tiny_temperature(ctx), ctx.images, "--calibrated", "--quiet")
    return checked(proc, ("nan" in proc.out.lower(), "nan in the output"), (proc.rc == 0, "accepted T=1e-300"))


@attack("wrong answer", "calibration temperature 1e-300: serve --calibrated")
def _(ctx):
    return served_status(ctx, tiny_temperature(ctx), calibrated=True)


@attack("wrong answer", "two random sweeps at once into one folder", "either")
def _(ctx):
    spec = ctx.sweep_spec('[search]\nmethod = "random"\ntrials = 2\nseed = 0\n[search.space]\nlr = { log_uniform = [0.01, 0.1] }\n')
    out = ctx.fresh("sweep-twice")
    command = [sys.executable, "-m", "cifarlab", "sweep", str(spec), "--out", str(out), "--data-dir", str(ctx.data), "--quiet"]
    procs = [subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [Proc(command, p.wait(timeout=300), *p.communicate()) for p in procs]
    listed = run_cli("sweep", spec, "--out", out, "--list")
    finished_but_failed = [line for line in listed.out.splitlines() if "failed" in line]
    worst = next((r for r in results if base_class(r) in BAD), results[1] if results[1].rc else results[0])
    return checked(
        worst,
        (all(r.rc == 0 for r in results) and bool(finished_but_failed), f"both ran; --list: {finished_but_failed[:2]}"),
        (listed.rc != 0, f"--list afterwards failed: {listed.err.strip()[:120]}"),
    )


@attack("wrong answer", "service OpenAPI: POST /predict requestBody and its 400/408/413/415/503", "proper")
def _(ctx):
    with serve_client(ctx.run) as client:
        schema = client.get("/openapi.json").json()
    post = schema["paths"]["/predict"]["post"]
    content = post.get("requestBody", {}).get("content", {})
    missing = [code for code in ("400", "408", "413", "415", "503") if code not in post.get("responses", {})]
    problems = [] if "multipart/form-data" in content else ["no multipart requestBody"]
    return Verdict(None, problems + ([f"undocumented {missing}"] if missing else []))


@attack("wrong answer", "service: HEAD / and HEAD /health", "proper")
def _(ctx):
    with serve_client(ctx.run) as client:
        codes = {path: client.head(path).status_code for path in ("/", "/health")}
    return Verdict(None, [f"HEAD {p} -> {c}" for p, c in codes.items() if c != 200])


def resnet9000(ctx: Context) -> Path:
    run = ctx.run_copy("model-tampered")  # a label without "resnet9000", which the checks look for
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "model": "resnet9000", "surprise_field": 1}))
    return run


@attack("wrong answer", "config.json model=resnet9000 + unknown field: runs", "either")
def _(ctx):
    run = resnet9000(ctx)
    proc = run_cli("runs", run.parent)
    shown = [line for line in proc.out.splitlines() if "resnet9000" in line]
    return checked(proc, (bool(shown), f"lists model resnet9000: {shown[:1]}"))


@attack("wrong answer", "config.json model=resnet9000 + unknown field: compare", "either")  # refused, or the checkpoint's model shown
def _(ctx):
    out = ctx.fresh("cmp9000")
    proc = run_cli("compare", ctx.run, resnet9000(ctx), "--out", out, "--data-dir", ctx.data, "--quiet")
    shown = out.exists() and any("resnet9000" in p.read_text() for p in out.rglob("*.html"))
    return checked(proc, (shown, "compare shows resnet9000"))


@attack("wrong answer", "config.json model=resnet9000 + unknown field: report", "either")  # refused, or the checkpoint's model shown
def _(ctx):
    run = resnet9000(ctx)
    proc = run_cli("report", run, "--data-dir", ctx.data, "--quiet")
    return checked(proc, (any("resnet9000" in p.read_text() for p in run.rglob("*.html")), "report shows resnet9000"))


def unreadable(ctx: Context, inner: bool) -> Path:
    """A copy of the data whose folder (or its cifar-10-batches-bin) has mode 000."""
    folder = ctx.fresh("unreadable")
    shutil.copytree(ctx.data, folder)
    (folder / "cifar-10-batches-bin" if inner else folder).chmod(0)
    return folder


# root, as every process here is, would read a mode-000 folder: the CLI runs without that capability
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]

for _inner, _which in ((False, "an unreadable data folder"), (True, "a data folder whose cifar-10-batches-bin is unreadable")):

    def _info(ctx, inner=_inner):
        proc = run_cli("info", "--data-dir", unreadable(ctx, inner), prefix=NO_DAC)
        return checked(proc, ("downloaded on first use" in proc.out + proc.err, "says not found, downloaded on first use"))

    def _train(ctx, inner=_inner):
        proc = run_cli(*TRAIN, "--data-dir", unreadable(ctx, inner), "--out", ctx.fresh("unreadable-run"), prefix=NO_DAC)
        return checked(proc, ("the download from" in proc.err, "tried to download into it"))

    attack("wrong answer", f"info --data-dir on {_which}", "either")(_info)
    attack("wrong answer", f"train --data-dir on {_which} (no download attempt)")(_train)


@attack("wrong answer", "sweep variant name of 300 characters: --list")
def _(ctx):
    return refused_quietly(run_cli("sweep", ctx.sweep_spec(f'[[variants]]\nname = "{"x" * 300}"\nlr = 0.01\n'), "--list"))


@attack("wrong answer", "sweep variant name with a NUL byte: --list")
def _(ctx):
    return refused_quietly(run_cli("sweep", ctx.sweep_spec('[[variants]]\nname = "a\\u0000b"\nlr = 0.01\n'), "--list"))


# ---------------------------------------------------------------- left behind (3)


@attack("left behind", "report after a killed report's temporary file", "proper")
def _(ctx):
    run = ctx.run_copy("stale-report")
    stale_temporary(run, "report.html")
    return no_leftover(run_cli("report", run, "--data-dir", ctx.data, "--quiet"), run)


@attack("left behind", "export safetensors after a killed export's temporary folder", "proper")
def _(ctx):
    run = ctx.run_copy("stale-export")
    stale_temporary(run, "safetensors", is_folder=True)
    return no_leftover(run_cli("export", run, "--format", "safetensors", "--data-dir", ctx.data), run)


@attack("left behind", "report killed by SIGKILL mid-run, then report again", "proper")
def _(ctx):
    run = ctx.run_copy("killed-report")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifarlab", "report", str(run), "--data-dir", str(ctx.data), "--quiet"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(4)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.1)  # older than a live writer's grace
    return no_leftover(run_cli("report", run, "--data-dir", ctx.data, "--quiet"), run)


# ---------------------------------------------------------------- tracebacks (24)


@attack("traceback", "--set seed=99999999999999999999")
def _(ctx):
    out = ctx.fresh("seed")
    proc = run_cli(*TRAIN, "--data-dir", ctx.data, "--out", out, "--set", "seed=99999999999999999999")
    return checked(proc, (proc.rc == 0, "accepted"), (proc.rc != 0 and out.exists(), "left a run folder"))


@attack("traceback", "--set val_size=49999 with a small subset")
def _(ctx):
    out = ctx.fresh("valsize")
    proc = run_cli(*TRAIN, "--data-dir", ctx.data, "--out", out, "--set", "val_size=49999")
    return checked(proc, (proc.rc == 0, "accepted"), (out.exists(), "left a half-made run folder"))


@attack("traceback", "deeply nested TOML --config")
def _(ctx):
    path = ctx.fresh("deep").with_suffix(".toml")
    path.write_text("lr = " + deep_json(5000) + "\n")
    return Verdict(run_cli(*TRAIN, "--config", path, "--data-dir", ctx.data, "--out", ctx.fresh("deep-run")))


@attack("traceback", "deeply nested JSON --config")
def _(ctx):
    path = ctx.fresh("deep").with_suffix(".json")
    path.write_text('{"lr": ' + deep_json() + "}")
    return Verdict(run_cli(*TRAIN, "--config", path, "--data-dir", ctx.data, "--out", ctx.fresh("deep-run")))


@attack("traceback", "deeply nested calibration.json: predict --calibrated")
def _(ctx):
    run = ctx.run_copy("deep-calibration")
    (run / "calibration.json").write_text('{"temperature": ' + deep_json() + "}")
    return Verdict(run_cli("predict", run, ctx.images, "--calibrated", "--quiet"))


@attack("traceback", "deeply nested export config.json: predict")
def _(ctx):
    export = ctx.export_copy("deep-export")
    (export / "config.json").write_text('{"format": ' + deep_json() + "}")
    return Verdict(run_cli("predict", export, ctx.images, "--quiet"))


@attack("traceback", "evaluate --corruption-seed -1")
def _(ctx):
    return refused_quietly(run_cli("evaluate", ctx.run, "--corruptions", "--corruption-seed", "-1", "--data-dir", ctx.data))


def finished_sweep(ctx: Context) -> tuple[Path, Path]:
    """A one-trial TPE search (an optuna.db), made once."""
    if not hasattr(ctx, "_sweep"):
        spec = ctx.sweep_spec('[search]\nmethod = "random"\ntrials = 1\nseed = 0\n[search.space]\nlr = { log_uniform = [0.01, 0.1] }\n')
        out = ctx.fresh("sweep")
        proc = run_cli("sweep", spec, "--out", out, "--data-dir", ctx.data, "--quiet")
        assert proc.rc == 0, proc.err[-300:]
        ctx._sweep = (spec, out)
    return ctx._sweep


def damaged_study(ctx: Context, damage: Callable[[bytes], bytes]) -> Verdict:
    spec, out = finished_sweep(ctx)
    copy = ctx.fresh("study")
    shutil.copytree(out, copy)
    db = copy / "optuna.db"
    db.write_bytes(damage(db.read_bytes()))
    return Verdict(run_cli("sweep", spec, "--out", copy, "--list"))


@attack("traceback", "optuna.db overwritten with garbage")
def _(ctx):
    return damaged_study(ctx, lambda data: os.urandom(len(data)))


@attack("traceback", "optuna.db cut in half")
def _(ctx):
    return damaged_study(ctx, lambda data: data[: len(data) // 2])


@attack("traceback", "sweep (not --list) with a 300-character variant name")
def _(ctx):
    spec = ctx.sweep_spec(f'[[variants]]\nname = "{"y" * 300}"\nlr = 0.01\n')
    return refused_quietly(run_cli("sweep", spec, "--out", ctx.fresh("longname"), "--data-dir", ctx.data, "--quiet"))


@attack("traceback", "predict --output /proc/out.json")
def _(ctx):
    return Verdict(run_cli("predict", ctx.run, ctx.images, "--output", "/proc/out.json", "--quiet"))


for _command in (["report", "--quiet"], ["evaluate"], ["calibrate"], ["export", "--format", "onnx"], ["export", "--format", "safetensors"]):

    def _read_only(ctx, command=_command):
        run = ctx.run_copy("ro")
        return read_only(ctx, command[0], run, *command[1:], "--data-dir", ctx.data, folder=run)

    attack("traceback", f"{' '.join(_command[:1] + _command[2:])} on a read-only run folder")(_read_only)

FULL_DISK = {
    "train": lambda run: [*TRAIN, "--out", run.parent / "new-run"],
    "report": lambda run: ["report", run, "--quiet"],
    "evaluate": lambda run: ["evaluate", run],
    "calibrate": lambda run: ["calibrate", run],
    "export onnx": lambda run: ["export", run, "--format", "onnx"],
    "export safetensors": lambda run: ["export", run, "--format", "safetensors"],
}
for _label, _args in FULL_DISK.items():

    def _full(ctx, args=_args):
        return full_disk(ctx, lambda run: [*args(run), "--data-dir", ctx.data])

    attack("traceback", f"{_label} on a full disk")(_full)


@attack("traceback", "predict --output on a full disk")
def _(ctx):
    return full_disk(ctx, lambda run: ["predict", run, ctx.images, "--output", run / "out.json", "--quiet"])


# ---------------------------------------------------------------- also noted


@attack("also noted", "checkpoint holding a pickle payload: predict (message, payload)")
def _(ctx):
    run, marker = pickled_checkpoint(ctx)
    return payload_verdict(run_cli("predict", run, ctx.images, "--quiet"), marker)


@attack("also noted", "a FIFO as a CIFAR-10-C file")
def _(ctx):
    folder = ctx.fresh("fifo-c")
    folder.mkdir()
    os.mkfifo(folder / "labels.npy")
    os.mkfifo(folder / "contrast.npy")
    proc = run_cli("evaluate", ctx.run, "--corruptions", "--corruptions-dir", folder, "--data-dir", ctx.data, timeout=60)
    return checked(proc, ("not found" in proc.err, "reads as not found"))


@attack("also noted", "train --init-from an exported safetensors folder", "proper")
def _(ctx):
    return Verdict(run_cli(*TRAIN, "--init-from", ctx.export, "--data-dir", ctx.data, "--out", ctx.fresh("init-from")))


@attack("also noted", "predict --top-k 11 (10 classes)")
def _(ctx):
    return refused_quietly(run_cli("predict", ctx.run, ctx.images, "--top-k", "11", "--quiet"))


@attack("also noted", "serve ?top_k=11 (10 classes)")
def _(ctx):
    with serve_client(ctx.run) as client:
        response = client.post("/predict?top_k=11", files={"file": ("a.png", png_bytes(ctx), "image/png")})
    return Verdict(
        None,
        [f"answered {response.status_code}"] if response.status_code not in (400, 422) else [],
        kind="one-line error" if response.status_code in (400, 422) else None,
        detail=f"HTTP {response.status_code}",
    )


@attack("also noted", "--set milestones=[1..15000]")
def _(ctx):
    out = ctx.fresh("milestones")
    proc = run_cli(*TRAIN, "--data-dir", ctx.data, "--out", out, "--set", f"milestones=[{','.join(map(str, range(1, 15001)))}]")
    return refused_quietly(proc)


# ---------------------------------------------------------------- earlier classic attacks (a sample)


@attack("classic", "predict a run whose checkpoint.pt is missing")
def _(ctx):
    run = ctx.run_copy("no-checkpoint")
    (run / "checkpoint.pt").unlink()
    return Verdict(run_cli("predict", run, ctx.images, "--quiet"))


@attack("classic", "evaluate a checkpoint of random bytes")
def _(ctx):
    run = ctx.run_copy("random-checkpoint")
    (run / "checkpoint.pt").write_bytes(os.urandom(4096))
    before = snapshot(run)
    return kept(run, run_cli("evaluate", run, "--data-dir", ctx.data), before)


@attack("classic", "train --resume from a truncated checkpoint")
def _(ctx):
    run = ctx.run_copy("cut-checkpoint")
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    before = snapshot(run)
    return kept(run, run_cli("train", "--resume", run, "--data-dir", ctx.data, "--quiet"), before)


for _label, _args in {
    "evaluate": ["evaluate"],
    "export": ["export", "--format", "onnx"],
    "train --resume": ["train", "--quiet", "--resume"],
    "train --init-from": [*TRAIN, "--init-from"],
}.items():

    def _pickled(ctx, args=_args):
        run, marker = pickled_checkpoint(ctx)
        extra = ["--out", ctx.fresh("init-pickle")] if "--init-from" in args else []
        return payload_verdict(run_cli(*args, run / "checkpoint.pt" if "--init-from" in args else run, *extra, "--data-dir", ctx.data), marker)

    attack("classic", f"pickle payload checkpoint: {_label}")(_pickled)


@attack("classic", "pickle payload checkpoint: serve")
def _(ctx):
    run, marker = pickled_checkpoint(ctx)
    try:
        return served_status(ctx, run)
    finally:
        if marker.exists():
            raise RuntimeError("BREACH: the pickle payload ran")


@attack("classic", "truncated metrics.jsonl: report and runs", "either")
def _(ctx):
    run = ctx.run_copy("cut-metrics")
    data = (run / "metrics.jsonl").read_bytes()
    (run / "metrics.jsonl").write_bytes(data[: len(data) - 7])
    proc = run_cli("report", run, "--data-dir", ctx.data, "--quiet")
    listed = run_cli("runs", run.parent)
    return Verdict(listed if base_class(listed) in BAD else proc)


@attack("classic", "results.json with wrong types: runs and compare", "either")
def _(ctx):
    run = ctx.run_copy("bad-types")
    results = json.loads((run / "results.json").read_text())
    tampered = {k: ("99%" if isinstance(v, float) else [v] if isinstance(v, int) else v) for k, v in results.items()}
    (run / "results.json").write_text(json.dumps(tampered))
    listed = run_cli("runs", run.parent)
    compared = run_cli("compare", ctx.run, run, "--out", ctx.fresh("cmp-types"), "--data-dir", ctx.data, "--quiet")
    worst = listed if base_class(listed) in BAD else compared
    return checked(worst, ("99%" in listed.out, "runs shows a tampered value"))


@attack("classic", "sweep variant named ../../escape (path traversal)")
def _(ctx):
    spec = ctx.sweep_spec('[[variants]]\nname = "../../escape"\nlr = 0.01\n')
    out = ctx.fresh("traversal")
    proc = run_cli("sweep", spec, "--out", out, "--data-dir", ctx.data, "--quiet")
    escaped = [p for p in (ctx.root, ctx.root.parent) if (p / "escape").exists()]
    return Verdict(proc, kind="breach" if escaped else None, detail=f"escaped to {escaped}" if escaped else "")


@attack("classic", "sweep variant named /tmp/absolute")
def _(ctx):
    spec = ctx.sweep_spec(f'[[variants]]\nname = "{ctx.root}/absolute"\nlr = 0.01\n')
    proc = run_cli("sweep", spec, "--out", ctx.fresh("absolute"), "--data-dir", ctx.data, "--quiet")
    return Verdict(proc, kind="breach" if (ctx.root / "absolute").exists() else None)


def odd_images(ctx: Context) -> Path:
    from PIL import Image

    folder = ctx.fresh("odd-images")
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    (folder / "cut.png").write_bytes(png_bytes(ctx)[:40])
    Image.new("RGB", (1, 1)).save(folder / "one.png")
    Image.new("I;16", (40, 30)).save(folder / "sixteen.png")
    Image.new("CMYK", (50, 50)).save(folder / "cmyk.jpg")
    Image.new("RGBA", (32, 32)).save(folder / "alpha.png")
    frames = [Image.new("P", (32, 32), i) for i in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("1", (20000, 20000)).save(folder / "huge.png")  # 400 M pixels, a few kB on disk
    return folder


@attack("classic", "predict a folder of odd images (empty, text, cut, 1x1, 16-bit, CMYK, alpha, animated, 20000x20000)", "either")
def _(ctx):
    proc = run_cli("predict", ctx.run, odd_images(ctx), "--quiet")
    return checked(proc, ("nan" in proc.out.lower(), "nan in the output"))


@attack("classic", "serve: garbage, empty, a 20000x20000 image, no file field", "either")
def _(ctx):
    import io

    from PIL import Image

    huge = io.BytesIO()
    Image.new("1", (20000, 20000)).save(huge, format="PNG")
    bodies = {
        "garbage": {"file": ("a.png", os.urandom(500), "image/png")},
        "empty": {"file": ("a.png", b"", "image/png")},
        "huge": {"file": ("a.png", huge.getvalue(), "image/png")},
        "no field": {"other": ("a.png", b"x", "image/png")},
    }
    with serve_client(ctx.run) as client:
        codes = {k: client.post("/predict", files=v).status_code for k, v in bodies.items()}
    return Verdict(None, [f"{k} -> {c}" for k, c in codes.items() if c >= 500 or c == 200], detail=str(codes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="run only attacks whose name contains one of these")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "attacks.json")
    args = parser.parse_args(argv)
    chosen = [a for a in ATTACKS if not args.only or any(part in a.name for part in args.only)]
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="cifarlab-attacks-") as tmp:
        ctx = Context(Path(tmp))
        outcomes = []
        for item in chosen:
            outcome = judge(ctx, item)
            outcomes.append(outcome)
            print(f"{outcome.kind:15} {item.family:12} {item.name}  {outcome.stderr[:100]}", flush=True)
    counts = {kind: sum(o.kind == kind for o in outcomes) for kind in dict.fromkeys(o.kind for o in outcomes)}
    print("\nclass            attacks")
    for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"{kind:16} {n:7d}")
    bad = [o for o in outcomes if o.kind in BAD]
    for o in bad:
        print(f"NOT PROPER: {o.kind}: {o.name}: {o.command}\n    {o.stderr} {o.detail}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"seconds": round(time.time() - started, 1), "counts": counts, "attacks": [o.__dict__ for o in outcomes]}, indent=1) + "\n"
    )
    print(f"{len(outcomes)} attacks in {time.time() - started:.0f} s; results in {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
