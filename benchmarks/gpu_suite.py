"""Everything a GPU slot should measure, in one command, within a time budget, into one JSON file.

    CIFARLAB_DATA=/tmp/cifar10 PYTHONPATH=src python benchmarks/gpu_suite.py --out DIR   # on the GPU machine
    PYTHONPATH=src python benchmarks/gpu_suite.py --device cpu --smoke --out DIR          # the dry run (CI)

Steps, in order (docs/gpu.md says how to stage the data and collect the result):
  environment       GPU name, driver, torch, CUDA, cuDNN and NCCL versions, optional packages
  cuda_tests        tests/test_cuda.py under pytest (marker `cuda`), each test's outcome
  paper_epoch       the paper preset's seconds per epoch (its own dtype and float32), against
                    the report's GTX 1070
  throughput        training and inference images/s of every preset's network at its batch size
  profile           torch.profiler on `fast`'s training step: no host-to-device copy and no
                    host wait may happen in every step (the step fails if one does); top operators
  time_to_accuracy  `fast` and `airbench94` trained to their final test accuracy (with the
                    preset's TTA), timed with CUDA events as the speed records time theirs:
                    data on the GPU beforehand, one untimed warm-up training per preset (and
                    torch.compile, with --compile) reported apart, evaluation reported apart;
                    seed after seed while the budget lasts (--seeds, default 3)

The JSON (DIR/gpu_suite.json) is rewritten after every step and every timed run, so a run killed
from outside still leaves what it measured. Before each step the suite checks the time left of
--budget-seconds; a step that would not fit is skipped with the reason. A failing step is recorded
with its error and the suite goes on; the exit status is 1 if any step failed.

--smoke runs every step on a few hundred images, one epoch and one seed (the real data when
found, else random images), so a broken suite is found on a CPU before a GPU slot is spent on it.
Needs only torch, numpy and the project's source; pytest for the cuda_tests step.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STARTED = time.monotonic()  # the budget counts from here, before torch is imported

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's cifarlab, installed or not

import torch  # noqa: E402
from measure import Stopwatch, inference_throughput, profile_training_steps, summary, training_throughput  # noqa: E402

import cifarlab  # noqa: E402
from cifarlab.common.files import atomic_write_json  # noqa: E402
from cifarlab.common.metrics import evaluate  # noqa: E402
from cifarlab.data import CLASSES, MEAN, STD, Cifar10, DataError, load_cifar10  # noqa: E402
from cifarlab.models import list_models  # noqa: E402
from cifarlab.runtime import autocast_dtype, keep_freed_memory, resolve_device, set_cpu_threads, tune_for_training  # noqa: E402
from cifarlab.training import train as train_module  # noqa: E402
from cifarlab.training.config import TrainConfig, apply_overrides  # noqa: E402
from cifarlab.training.learner import Splits, build_learner, compile_trainee, make_splits, train_epoch  # noqa: E402
from cifarlab.training.presets import PRESETS, get_preset  # noqa: E402

RESULT_FILE = "gpu_suite.json"
TIMED_PRESETS = ("fast", "airbench94")
# Published times to 94% on CIFAR-10, reported by their authors (not measured here), for comparison.
RECORDS = {
    "airbench94_muon": {"seconds": 2.59, "gpu": "A100", "target_accuracy": 0.94},
    "hiverge": {"seconds": 2.0, "gpu": "A100", "target_accuracy": 0.94},
}
REPORT_GTX1070 = {
    "gpu": "GTX 1070",
    "test_accuracy": 0.8565,
    "total_seconds": 2023,
    "note": "the report gives its total training time only, not seconds per epoch",
}


@dataclass(frozen=True)
class Plan:
    """How much each step does: the GPU sizes, or the smoke run's few hundred images."""

    train_images: int | None  # None: all 50,000
    test_images: int | None  # None: all 10,000
    epochs: int | None  # None: the preset's
    seeds: int
    val_size: int  # the paper preset's validation split (the report's 5,000)
    paper_train_images: int | None  # None: all the others
    throughput_images: int  # training images per throughput pass...
    throughput_batches: int  # ...or this many of the preset's batches, if more
    throughput_repeats: int
    inference_images: int
    profile_batch_size: int | None  # None: the preset's
    cuda_tests_seconds: float  # the pytest run's own time limit
    first_run_seconds: float  # time left that a preset's first timed run needs to be started


GPU_PLAN = Plan(
    train_images=None,
    test_images=None,
    epochs=None,
    seeds=3,
    val_size=5000,
    paper_train_images=None,
    throughput_images=10240,
    throughput_batches=20,
    throughput_repeats=2,
    inference_images=10000,
    profile_batch_size=None,
    cuda_tests_seconds=240,
    first_run_seconds=30,
)
SMOKE_PLAN = Plan(
    train_images=200,
    test_images=64,
    epochs=1,
    seeds=1,
    val_size=20,
    paper_train_images=64,
    throughput_images=64,
    throughput_batches=0,
    throughput_repeats=1,
    inference_images=64,
    profile_batch_size=16,
    cuda_tests_seconds=120,
    first_run_seconds=0,
)


# ---------------------------------------------------------------- the suite: budget and the JSON


class Suite:
    """Runs steps within a time budget and keeps the JSON file up to date after each."""

    def __init__(self, path: Path, budget_seconds: float, header: dict):
        self.path, self.started = path, STARTED
        self.deadline = self.started + budget_seconds
        self.report = {**header, "budget_seconds": budget_seconds, "finished": False, "running": None, "steps": {}}
        self.save()
        signal.signal(signal.SIGTERM, self._terminated)

    def _terminated(self, signum, frame) -> None:
        """Killed from outside (a timeout): say so, and during which step, in the JSON."""
        self.report["terminated"] = f"SIGTERM during {self.report['running'] or 'no step'}"
        self.save()
        sys.exit(128 + signum)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.report["elapsed_seconds"] = time.monotonic() - self.started
        atomic_write_json(self.path, self.report)

    def save_partial(self, name: str, result: dict) -> None:
        """A long step's results so far (kept if the process is killed before the step ends)."""
        self.report["steps"][name] = {"status": "running", "result": result}
        self.save()

    def step(self, name: str, needs_seconds: float, fn: Callable[[], dict]) -> None:
        if self.remaining() < needs_seconds:
            self._record(name, "skipped", 0.0, reason=f"time budget: {self.remaining():.0f} s left, the step needs about {needs_seconds:.0f} s")
            return
        print(f"== {name} ({self.remaining():.0f} s of the budget left)", flush=True)
        self.report["running"] = name
        self.save()
        start = time.monotonic()
        try:
            result = fn()
        except Skip as e:
            self._record(name, "skipped", time.monotonic() - start, reason=str(e))
        except StepFailed as e:
            self._record(name, "failed", time.monotonic() - start, error=str(e), result=e.result)
        except Exception as e:  # recorded; the remaining steps still run
            self._record(
                name,
                "failed",
                time.monotonic() - start,
                error=f"{type(e).__name__}: {e}",
                traceback=traceback.format_exc()[-4000:],
                result=self.report["steps"].get(name, {}).get("result"),
            )
        else:
            self._record(name, "ok", time.monotonic() - start, result=result)

    def skip(self, name: str, reason: str) -> None:
        self._record(name, "skipped", 0.0, reason=reason)

    def _record(self, name: str, status: str, seconds: float, **fields) -> None:
        self.report["steps"][name] = {"status": status, "seconds": seconds, **{k: v for k, v in fields.items() if v is not None}}
        self.report["running"] = None
        self.save()
        detail = fields.get("reason") or fields.get("error") or ""
        print(f"   {name}: {status} in {seconds:.1f} s {detail}".rstrip(), flush=True)

    def finish(self) -> int:
        self.report["finished"] = True
        self.save()
        failed = [n for n, s in self.report["steps"].items() if s["status"] == "failed"]
        print(f"written to {self.path}" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
        return 1 if failed else 0


class Skip(Exception):
    """A step that cannot run here (no pytest); the message is the reason recorded."""


class StepFailed(Exception):
    """A step that ran and found a problem: its results are kept with the failure."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------- environment


def environment(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python_version": platform.python_version(),
        "numpy_version": _version("numpy"),
        "cifarlab_version": cifarlab.__version__,
        "git_commit": _git_commit(),
        "platform": platform.platform(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "optional_packages": {name: _version(name) for name in OPTIONAL_PACKAGES},
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_name=props.name,
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_multiprocessors=props.multi_processor_count,
            gpu_count=torch.cuda.device_count(),
            driver_version=_driver_version(),
            nccl_version=_nccl_version(),
            tf32={"cudnn_conv": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return info


# what the CUDA tests use where present (they skip by name where not), and torch.compile's GPU backend
OPTIONAL_PACKAGES = ("pytest", "fastapi", "httpx", "python-multipart", "pillow", "onnx", "onnxruntime", "onnxscript", "triton")


def _version(distribution: str) -> str | None:
    """The installed version of a distribution, read from its metadata (nothing is imported)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nccl_version() -> str | None:
    try:
        import torch.cuda.nccl as nccl

        version = nccl.version()  # a tuple in recent torch, an int in older ones
    except Exception:  # a build without NCCL
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def _driver_version() -> str | None:
    """From nvidia-smi, else the kernel module's version file; torch does not report it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        return Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


# ---------------------------------------------------------------- the CUDA tests


def cuda_tests(time_limit: float) -> dict:
    """tests/test_cuda.py in a pytest process of its own (a hang or crash there cannot stop the suite)."""
    if importlib.util.find_spec("pytest") is None:
        raise Skip("pytest is not installed: the CUDA tests need it")
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-v", "-rA", "-p", "no:cacheprovider", "-m", "cuda", f"--junitxml={junit}", "tests/test_cuda.py"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=time_limit)
        except subprocess.TimeoutExpired as e:  # -v: the output names every test that finished, and the one running
            output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            raise StepFailed(f"pytest did not finish in {time_limit:.0f} s", {"output_tail": output[-3000:]}) from None
        tests = _junit_outcomes(junit) if junit.exists() else []
    counts = {outcome: sum(t["outcome"] == outcome for t in tests) for outcome in ("passed", "failed", "error", "skipped")}
    result = {
        "command": " ".join(command[1:]),
        "exit_status": done.returncode,
        "counts": counts,
        "tests": tests,
        "output_tail": done.stdout[-3000:] + done.stderr[-1000:],
    }
    if done.returncode not in (0, 5) or counts["failed"] or counts["error"]:  # 5: no test collected
        raise StepFailed(f"{counts['failed']} failed, {counts['error']} errors (pytest exit status {done.returncode})", result)
    return result


def _junit_outcomes(path: Path) -> list[dict]:
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or child.text or "").strip()[:500]
        name = case.get("name")
        tests.append({"test": name, "outcome": outcome, "seconds": float(case.get("time", 0)), "message": message})
    return tests


# ---------------------------------------------------------------- data


def load_data(data_dir: Path | None, plan: Plan, smoke: bool) -> tuple[Cifar10 | None, str]:
    """The data set (never downloaded), cut to the plan's sizes; in a smoke run random images when
    none is found. Returns (None, why) when a full run has no data."""
    try:
        data = load_cifar10(data_dir, download=False)
        source = data.source
    except DataError as e:
        if not smoke:
            return None, str(e)
        data, source = random_data(plan.train_images or 50000, plan.test_images or 10000), f"random images ({e})"
    train, test = plan.train_images or len(data.train_labels), plan.test_images or len(data.test_labels)
    data = Cifar10(data.train_images[:train], data.train_labels[:train], data.test_images[:test], data.test_labels[:test], data.classes, data.source)
    return data, source


def random_data(train: int, test: int) -> Cifar10:
    generator = torch.Generator().manual_seed(0)
    images = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)  # noqa: E731
    labels = lambda n: torch.arange(n) % 10  # noqa: E731
    return Cifar10(images(train), labels(train), images(test), labels(test), CLASSES, "random")


def with_epochs(config: TrainConfig, epochs: int | None) -> TrainConfig:
    """`config` for `epochs` epochs (None: its own), as `--epochs` gives it (the same full-resolution finish)."""
    return config if epochs is None else apply_overrides(config, {"epochs": epochs})


def warm_up(config: TrainConfig, splits: Splits, device: torch.device, compile_model: bool) -> dict:
    """An untimed-for-the-record training of a fresh network on a few batches of every shape a run
    has (full batches and the last, shorter one) and an evaluation of one batch, as airbench warms
    up: cuDNN autotuning, CUDA context, allocator and (with compile) torch.compile happen here."""
    n, batch = len(splits.train_x), config.batch_size
    images = min(n, 2 * batch) + (n % batch if n > 2 * batch else 0)
    small = Splits(
        splits.train_x[:images],
        splits.train_y[:images],
        splits.val_x[:0],
        splits.val_y[:0],
        splits.test_x[: config.eval_batch_size],
        splits.test_y[: config.eval_batch_size],
        splits.classes,
        splits.source,
    )
    # progressive resolution: one epoch at each stem stride, so both shapes are warmed up
    warm = config.replace(epochs=2, low_res_epochs=1) if config.low_res_epochs else config.replace(epochs=1)
    with Stopwatch(device) as watch:
        learner = build_learner(warm, small, device, torch.Generator(device).manual_seed(0))
        compile_seconds = compile_trainee(learner, small, config) if compile_model else None  # small has the run's batch shapes
        for epoch in range(1, warm.epochs + 1):
            train_epoch(learner, small, warm, progress=False, epoch=epoch)
        _test(learner.model, small, config)
    return {"seconds": watch.seconds, "images": images, "compile_seconds": compile_seconds}


def _test(model: torch.nn.Module, splits: Splits, config: TrainConfig):
    """The final test evaluation as train() does it: float32, the preset's TTA."""
    return evaluate(
        model, splits.test_x, splits.test_y, MEAN, STD, tta=config.tta, batch_size=config.eval_batch_size, channels_last=config.channels_last
    )


# ---------------------------------------------------------------- the paper preset's epoch


def paper_epoch(data: Cifar10, device: torch.device, plan: Plan) -> dict:
    """Seconds per epoch of the paper preset (batch 64, its validation pass included), in the
    preset's dtype (amp auto) and in float32 as the report's GTX 1070 trained."""
    base = get_preset("paper").replace(val_size=plan.val_size)
    splits = make_splits(data, base.val_size, device, train_subset=plan.paper_train_images)
    result = {"train_images": len(splits.train_x), "val_images": len(splits.val_x), "batch_size": base.batch_size, "report": REPORT_GTX1070}
    for amp in ("auto", "off"):
        if autocast_dtype(amp, device) in result:
            continue  # "auto" is float32 here too
        config = base.replace(amp=amp)
        warm_up(config, splits, device, compile_model=False)
        learner = build_learner(config, splits, device, torch.Generator(device).manual_seed(0))
        with Stopwatch(device) as training:
            record = train_epoch(learner, splits, config, progress=False)
        with Stopwatch(device) as validation:
            evaluate(
                learner.model, splits.val_x, splits.val_y, MEAN, STD, batch_size=config.eval_batch_size, amp=amp, channels_last=config.channels_last
            )  # in the training dtype, as train() validates
        epoch = training.seconds + validation.seconds
        result[autocast_dtype(amp, device)] = {
            "amp": amp,
            "train_seconds": training.seconds,
            "val_seconds": validation.seconds,
            "epoch_seconds": epoch,
            "steps": record["steps"],
            "seconds_per_step": training.seconds / record["steps"],
            "train_images_per_second": len(splits.train_x) / training.seconds,
            "epochs_in_the_reports_2023_seconds": REPORT_GTX1070["total_seconds"] / epoch,
        }
        print(f"   paper, {autocast_dtype(amp, device)}: {epoch:.2f} s per epoch ({training.seconds:.2f} s training)", flush=True)
    return result


# ---------------------------------------------------------------- throughput


def throughput(data: Cifar10, device: torch.device, plan: Plan) -> dict:
    """Training and inference images/s of every preset's network at the preset's batch sizes
    (training: `batch_size` in the preset's dtype; inference: `eval_batch_size`, float32 and bf16)."""
    result = {"presets": {}, "models": list_models()}
    for name, preset in PRESETS.items():
        config = preset.replace(val_size=0)
        images = max(plan.throughput_images, plan.throughput_batches * config.batch_size)
        splits = make_splits(data, 0, device, train_subset=images)
        training = training_throughput(config, splits, device, plan.throughput_repeats)
        model = build_learner(config, splits, device, torch.Generator(device).manual_seed(0)).model
        test = splits.test_x[: plan.inference_images]
        inference = {
            dtype: inference_throughput(model, test, config.eval_batch_size, amp, config.channels_last, plan.throughput_repeats)
            for dtype, amp in (("float32", False), ("bfloat16", True))
        }
        result["presets"][name] = {
            "model": config.model,
            "model_options": config.model_options,
            "train_dtype": autocast_dtype(config.amp, device),
            "training": training,
            "inference": inference,
        }
        print(
            f"   {name}: training {training['images_per_second']:,.0f} images/s (batch {config.batch_size}), inference "
            f"{inference['float32']['images_per_second']:,.0f} float32 / {inference['bfloat16']['images_per_second']:,.0f} bf16 images/s",
            flush=True,
        )
    uncovered = sorted(set(list_models()) - {p.model for p in PRESETS.values()})
    if uncovered:
        result["models_without_a_preset"] = uncovered  # no preset batch size to measure them at
    return result


# ---------------------------------------------------------------- the training step's profile


def profile_step(data: Cifar10, device: torch.device, plan: Plan) -> dict:
    """Host traffic in every training step of `fast` (none is expected: no tensor from Python data,
    no copy to or from the host, no wait for the device) and the top operators by self CPU time."""
    config = get_preset("fast").replace(val_size=0, batch_size=plan.profile_batch_size)
    splits = make_splits(data, 0, device, train_subset=4 * config.batch_size)
    result = profile_training_steps(config, splits, device, steps=(2, 4))
    found = {name: count for name, count in result["host_traffic_per_step"].items() if count}
    print(f"   host traffic per step: {found or 'none'}; top op {result['top_ops_by_self_cpu'][0]['op']}", flush=True)
    if found:
        raise StepFailed(f"host traffic in every training step: {found}", result)
    return result


# ---------------------------------------------------------------- time to accuracy


def time_to_accuracy(suite: Suite, data: Cifar10, device: torch.device, plan: Plan, seeds: int, compile_model: bool) -> dict:
    """`fast` and `airbench94` from a fresh network to their final test accuracy, seed by seed
    (every preset's seed 0 first), each started only while the budget has room for it."""
    splits = make_splits(data, 0, device)  # on the device before any clock starts; all training images, as the records
    result = {
        "train_images": len(splits.train_x),
        "test_images": len(splits.test_x),
        "compile": compile_model,
        "timing": "CUDA events" if device.type == "cuda" else "time.perf_counter",
        "records_for_comparison": RECORDS,
        "presets": {},
    }
    configs = {}
    for name in TIMED_PRESETS:
        config = with_epochs(get_preset(name), plan.epochs).replace(val_size=0, compile=compile_model)
        configs[name] = config
        result["presets"][name] = {
            "config": config.to_dict(),
            "train_dtype": autocast_dtype(config.amp, device),
            "warm_up": warm_up(config, splits, device, compile_model),
            "runs": [],
        }
        suite.save_partial("time_to_accuracy", result)
    for seed in range(seeds):
        for name, config in configs.items():
            entry = result["presets"][name]
            needs = 1.25 * max((r["wall_seconds"] for r in entry["runs"]), default=plan.first_run_seconds)
            if suite.remaining() < needs:
                entry.setdefault("not_run", []).append(f"seed {seed}: {suite.remaining():.0f} s left of the budget, a run needs about {needs:.0f} s")
                continue
            entry["runs"].append(timed_run(config, splits, device, seed))
            _summarise(entry)
            suite.save_partial("time_to_accuracy", result)
    return result


def timed_run(config: TrainConfig, splits: Splits, device: torch.device, seed: int) -> dict:
    """One run: set-up (network, data-dependent initialisation, optimizer) and the epochs are the
    training time; torch.compile and the test evaluation are timed apart."""
    started = time.monotonic()
    torch.manual_seed(seed)
    generator = torch.Generator(device).manual_seed(seed)
    with Stopwatch(device) as setup:
        learner = build_learner(config, splits, device, generator)
    compile_seconds = compile_trainee(learner, splits, config) if config.compile else None
    with Stopwatch(device) as training:
        for epoch in range(1, config.epochs + 1):  # the epoch number chooses flips and stem stride
            record = train_epoch(learner, splits, config, progress=False, epoch=epoch)
        if learner.lookahead is not None:
            learner.lookahead.finish()  # evaluate the slow weights, as train() does
    with Stopwatch(device) as evaluation:
        test = _test(learner.model, splits, config)
    run = {
        "seed": seed,
        "test_accuracy": test.accuracy,
        "tta": config.tta,
        "epochs": config.epochs,
        "train_seconds": setup.seconds + training.seconds,
        "setup_seconds": setup.seconds,
        "epochs_seconds": training.seconds,
        "eval_seconds": evaluation.seconds,
        "compile_seconds": compile_seconds,
        "final_train_loss": record["train_loss"],
        "wall_seconds": time.monotonic() - started,
    }
    print(
        f"   {config.preset} seed {seed}: {test.accuracy:.2%} in {run['train_seconds']:.2f} s "
        f"(+ {run['eval_seconds']:.2f} s test evaluation, tta {config.tta})",
        flush=True,
    )
    return run


def _summarise(entry: dict) -> None:
    runs = entry["runs"]
    entry["test_accuracy"] = summary([r["test_accuracy"] for r in runs])
    entry["train_seconds"] = summary([r["train_seconds"] for r in runs])


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="folder for gpu_suite.json (default: $OUT)")
    p.add_argument("--device", default="auto", help="auto (default: the GPU), cuda, cuda:N, or cpu with --smoke")
    p.add_argument("--smoke", action="store_true", help="every step on a few hundred images: the CPU dry run")
    p.add_argument("--budget-seconds", type=float, default=420, help="stop starting steps and runs past this (default: %(default)s)")
    p.add_argument("--seeds", type=int, help="timed runs per preset while the budget lasts (default: 3; 1 with --smoke)")
    p.add_argument("--compile", action="store_true", help="torch.compile the timed networks (compile time reported apart)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default: %(default)s)")
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 folder (default: $CIFARLAB_DATA); never downloaded")
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["cuda_tests", "paper_epoch", "throughput", "profile", "time_to_accuracy"],
        help="leave a step out (repeatable)",
    )
    args = p.parse_args(argv)
    if args.out is None:
        p.error("give --out DIR or set $OUT")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out}: not a folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu" and not args.smoke:
        sys.exit("gpu_suite: on a CPU, run the dry run (--smoke); the full suite is sized for a GPU")
    plan = SMOKE_PLAN if args.smoke else GPU_PLAN
    seeds = args.seeds or plan.seeds
    if device.type == "cpu":
        set_cpu_threads()
        keep_freed_memory()  # as train() does
    tune_for_training(device)  # cudnn.benchmark on CUDA, as train() sets it
    train_module.COMPILE_BACKEND = args.compile_backend
    args.out.mkdir(parents=True, exist_ok=True)
    header = {
        "suite": "cifarlab GPU suite",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "plan": plan.__dict__,
        "seeds": seeds,
    }
    suite = Suite(args.out / RESULT_FILE, args.budget_seconds, header)
    suite.step("environment", 0, lambda: environment(device))
    data, source = load_data(args.data_dir, plan, args.smoke)
    suite.report["data"] = {
        "source": source,
        "train_images": len(data.train_labels) if data else 0,
        "test_images": len(data.test_labels) if data else 0,
    }
    steps = {
        "cuda_tests": (10, lambda: cuda_tests(min(plan.cuda_tests_seconds, max(10, suite.remaining() - 60)))),
        "paper_epoch": (15 if device.type == "cuda" else 0, lambda: paper_epoch(data, device, plan)),
        "throughput": (20 if device.type == "cuda" else 0, lambda: throughput(data, device, plan)),
        "profile": (10 if device.type == "cuda" else 0, lambda: profile_step(data, device, plan)),
        "time_to_accuracy": (plan.first_run_seconds, lambda: time_to_accuracy(suite, data, device, plan, seeds, args.compile)),
    }
    for name, (needs, fn) in steps.items():
        if name in args.skip:
            suite.skip(name, "--skip")
        elif data is None and name != "cuda_tests":
            suite.skip(name, f"no data: {source}")
        else:
            suite.step(name, needs, fn)
    return suite.finish()


if __name__ == "__main__":
    sys.exit(main())
