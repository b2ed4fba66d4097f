"""Training, read top to bottom: data onto the device, model and optimizer, the epoch loop,
a checkpoint per epoch, and a final test evaluation written to results.json.

The whole data set lives on the training device as uint8; each batch is gathered, normalised
and augmented there as tensor operations. Resuming restores model, optimizer, schedule and
every random number generator, so a resumed run ends with the same weights as an
uninterrupted one.

Under torchrun (docs/scaling.md) the same code runs in every process: each takes its shard
of every global batch, DDP averages the gradients, evaluation is split exactly across the
processes, and rank 0 alone logs and writes the run directory. Those places say "DDP:".
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cifarlab.common import distributed
from cifarlab.common.checkpoint import load_training_state, model_metadata
from cifarlab.common.distributed import evaluate_sharded
from cifarlab.common.files import RunError
from cifarlab.common.rundir import CHECKPOINT, RunDir
from cifarlab.data import MEAN, STD, Cifar10, load_cifar10
from cifarlab.models import count_parameters
from cifarlab.runtime import (
    autocast_dtype,
    keep_freed_memory,
    resolve_device,
    set_cpu_threads,
    tune_for_training,
)
from cifarlab.text import first_problem
from cifarlab.training.config import ConfigError, TrainConfig, read_run_config
from cifarlab.training.learner import (
    Learner,
    Splits,
    TrainingDiverged,
    build_learner,
    check_batches,
    check_divergence,
    compile_trainee,
    make_splits,
    train_epoch,
)
from cifarlab.training.optim import early_stop_reason
from cifarlab.training.progress import log_line
from cifarlab.training.results import results_record, time_split
from cifarlab.training.tracking import tracking


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a batch scheduler's time limit, torchrun stopping its workers): handled as
    Ctrl-C is, so the run is recorded as stopped and its last checkpoint resumes it."""


@contextlib.contextmanager
def _sigterm_stops_training() -> Iterator[None]:
    """Turn SIGTERM into Terminated while training; the previous handler afterwards. Python sets
    signal handlers in the main thread only: elsewhere (a training in a thread) SIGTERM is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut short recording the first
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@dataclass
class Io:
    """Where a training reads its data and reports: not part of the run's config."""

    data_dir: Path | str | None = None
    device: str = "auto"
    progress: bool = True  # a bar on a terminal; off one, a step line with the time left now and then
    log: Callable[[str], None] = log_line
    data: Cifar10 | None = None  # already loaded (sweeps load it once); else read from data_dir
    on_epoch: Callable[[dict], None] | None = None  # each finished epoch's record (TensorBoard, tests)


def train(
    config: TrainConfig,
    out: Path | str,
    train_subset: int | None = None,
    *,
    data_dir: Path | str | None = None,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] = log_line,
    data: Cifar10 | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train `config` into a new run directory `out`; returns what results.json holds.

    `data_dir` (default: $CIFARLAB_DATA or the cache) or `data` already loaded; `device` auto, cpu,
    cuda or cuda:N; `progress` a bar (or, off a terminal, step lines); `log` each line of output;
    `on_epoch` each finished epoch's record. The run directory stays locked while this runs: a
    second training into it, or a resume of it, is a one-line RunError. Under torchrun, call
    `distributed.init_from_env` first and pass the device it returns.
    """
    if train_subset is not None and train_subset < 1:
        raise ConfigError(f"--train-subset {train_subset}: must be at least 1")
    io = Io(data_dir=data_dir, device=device, progress=progress, log=log, data=data, on_epoch=on_epoch)
    return _run(RunDir(out), config, train_subset, io)


def resume(out: Path | str, **io: Any) -> dict:
    """Continue the run in `out` from its last checkpoint to its end, exactly as if it had never
    stopped (a run that saved no epoch starts again from its config.json); returns results.
    Takes train()'s keyword options (data_dir, device, progress, log, data, on_epoch); without
    `data_dir` (or `data`) it reads the data the run recorded in its config.json."""
    return _run(RunDir(out), None, None, Io(**io))


@dataclass
class Job:
    """One training once its run directory is claimed: everything the epochs and the test need."""

    run: RunDir
    config: TrainConfig
    splits: Splits
    learner: Learner
    history: list[dict]
    meta: dict  # what the checkpoint carries for inference
    params: int
    train_dtype: str  # "bfloat16" or "float32", resolved for this device


def _run(run: RunDir, config: TrainConfig | None, train_subset: int | None, io: Io) -> dict:
    """Claim the run directory, then prepare, train and test; `config` None means resume."""
    started = time.perf_counter()
    dev = resolve_device(io.device)
    if not distributed.is_main():  # DDP: rank 0 alone prints and writes the run directory
        io = dataclasses.replace(io, log=lambda line: None, progress=False, on_epoch=None)
    if dev.type == "cpu":
        set_cpu_threads()
        keep_freed_memory()  # 1.14-1.42x more images/s on a CPU (runtime.py, docs/results.md)
    with contextlib.ExitStack() as held:
        held.enter_context(_sigterm_stops_training())
        # DDP: rank 0 alone locks and reads the run directory and tells the others (their machines need not have it)
        config, train_subset, resume, recorded = distributed.from_main(_claim_run, held, run, config, train_subset, io.log)
        if io.data_dir is None and io.data is None and recorded is not None:
            io = dataclasses.replace(io, data_dir=recorded)  # a resume finds the data its run trained on
        tracker = held.enter_context(tracking(run, config, io.log))  # MLflow hook: connects before any data is loaded
        held.enter_context(_determinism(config, io.log))
        tune_for_training(dev)  # after _determinism: autotuned kernels are not reproducible
        job = _prepare(run, config, resume, train_subset, dev, io)
        tracker.begin(job, resume)  # MLflow hook: the run, its parameters and tags
        io = dataclasses.replace(io, on_epoch=tracker.on_epoch(io.on_epoch))  # MLflow hook: each epoch's metrics
        return tracker.finish(_train_and_test(job, io, started))  # MLflow hook: results, artifacts, model


def _claim_run(
    held: contextlib.ExitStack, run: RunDir, config: TrainConfig | None, train_subset: int | None, log
) -> tuple[TrainConfig, int | None, bool, str | None]:
    """Lock the run directory (held until `held` closes) and check this training may use it; returns
    the config, the train subset, whether to resume from a checkpoint and (a resume) the data folder
    the run recorded, when it is still there. A resume of a run that saved no epoch starts it again
    from its config.json."""
    if config is not None:
        run.check_new_run()  # before locking too: a refused folder gets no lock file
        held.enter_context(run.lock())
        run.check_new_run()  # again, now that no other training can change the folder
        run.remove_temporaries()
        if config.init_from:  # recorded absolute, so the run still finds its source from anywhere
            config = config.replace(init_from=str(Path(config.init_from).resolve()))
        return config, train_subset, False, None
    run.require()
    held.enter_context(run.lock())
    run.remove_temporaries()
    saved = read_run_config(run.path)
    config = TrainConfig.from_dict(saved["train"], source=run.describe_config())
    recorded = saved.get("data") if saved.get("data") and Path(saved["data"]).exists() else None
    if run.has_checkpoint():
        return config, saved.get("train_subset"), True, recorded
    run.check_restartable()
    log(f"{run.path} saved no epoch before it stopped: starting it again from its config")
    return config, saved.get("train_subset"), False, recorded


def _prepare(run: RunDir, config: TrainConfig, resume: bool, train_subset: int | None, dev: torch.device, io: Io) -> Job:
    """Data onto the device, the learner, and the run directory started or its checkpoint restored."""
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=dev).manual_seed(config.seed)
    with distributed.main_first():  # DDP: rank 0 downloads, the others then read; a failure fails all
        data = io.data if io.data is not None else load_cifar10(io.data_dir)
    splits = make_splits(data, config.val_size, dev, train_subset)
    check_batches(len(splits.train_x), config, len(data.train_labels))
    learner = build_learner(config, splits, dev, generator, warm_start=not resume)
    train_dtype = autocast_dtype(config.amp, dev)
    meta = model_metadata(config.to_dict(), splits.classes, MEAN, STD, train_dtype)
    job = Job(run, config, splits, learner, [], meta, count_parameters(learner.model), train_dtype)
    distributed.seed_per_process(config.seed)  # DDP: own dropout masks per process
    if resume:
        _restore(job, io.log)
    elif distributed.is_main():
        run.start(_run_facts(job, train_subset, dev))
    if distributed.is_distributed():  # DDP: train through the wrapper; evaluate and save the model inside
        learner.trainee = distributed.wrap_model(learner.model, dev, config.sync_bn)
        learner.model = distributed.unwrap(learner.trainee)
    return job


def _run_facts(job: Job, train_subset: int | None, dev: torch.device) -> dict:
    """What config.json records besides the config: the data, the device, the dtype, the sizes."""
    return {
        "train": job.config.to_dict(),
        "data": str(Path(job.splits.source).resolve()),  # absolute: export and report find it from anywhere
        "train_subset": train_subset,
        "train_images": len(job.splits.train_x),
        "val_images": len(job.splits.val_x),
        "device": str(dev),
        "autocast_dtype": job.train_dtype,
        "world_size": distributed.world_size(),
        "torch_version": torch.__version__,
        "params": job.params,
        "init_from": job.learner.init_source,
    }


def _restore(job: Job, log: Callable[[str], None]) -> None:
    """Load the run's checkpoint into the learner (DDP: rank 0 reads it, every process loads it);
    RunError when it does not fit the run's config."""
    state = distributed.from_main(load_training_state, job.run.file(CHECKPOINT))  # RNG states stay CPU tensors
    try:
        job.learner.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
        config_name = Path(job.run.describe_config()).name
        raise RunError(f"{job.run.describe_checkpoint()}: does not fit this run's {config_name}: {first_problem(e)}") from None
    job.history = state["history"]
    distributed.restore_process_rng_state(state["rng"].get("processes"), job.config.seed, len(job.history))
    if distributed.is_main():  # the metrics may hold an epoch the checkpoint never saw (killed in between)
        job.run.rewrite_metrics(job.history)
    log(f"resuming {job.run.path} after epoch {len(job.history)} of {job.config.epochs}")


def _train_and_test(job: Job, io: Io, started: float) -> dict:
    """The epochs to the stop, then the test set; status.json says how it ended, whatever happens."""
    config, learner, main = job.config, job.learner, distributed.is_main()
    write_status = job.run.write_status if main else (lambda *a, **k: None)
    compile_seconds = compile_trainee(learner, job.splits, config) if config.compile else None
    setup_seconds = time.perf_counter() - started - (compile_seconds or 0)  # data to the device, init, resume
    write_status("running", epoch=len(job.history))
    try:
        io.log(_start_line(job))
        if compile_seconds is not None:
            io.log(f"compiled for training in {compile_seconds:.1f}s (not counted in the training time)")
        stop = _train_to_stop(job, io)
        results = _test(job, stop, compile_seconds, setup_seconds, started)
        if main:
            job.run.write_results(results)
        write_status("finished", epoch=len(job.history))
    except TrainingDiverged as e:
        write_status("failed", reason=str(e), epoch=len(job.history))
        raise
    except KeyboardInterrupt as e:
        write_status("stopped", reason="terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted", epoch=len(job.history))
        setattr(e, "resume_command", resume_command(job.run.path))  # noqa: B010  (not an attribute KeyboardInterrupt declares) the CLI's last line: how to go on
        raise
    except Exception as e:
        write_status("failed", reason=f"{type(e).__name__}: {e}", epoch=len(job.history))
        raise
    if stop:
        io.log(f"stopped early after epoch {len(job.history)}: {stop}")
    io.log(
        f"test accuracy {results['test_accuracy']:.2%} (error {results['test_error']:.2%}, tta={config.tta}); results in {job.run.describe_results()}"
    )
    return results


def resume_command(path: Path) -> str:
    """The command line that resumes the run in `path`, quoted for a shell."""
    return f"cifarlab train --resume {shlex.quote(str(path))}"


def _start_line(job: Job) -> str:
    world = distributed.world_size()
    across = f" x {world} processes" if world > 1 else ""
    return (
        f"{job.config.preset}: {job.config.model} with {job.params:,} parameters on {job.splits.train_x.device}{across}, "
        f"{len(job.splits.train_x):,} training images"
    )


def _train_to_stop(job: Job, io: Io) -> str | None:
    """Epochs until the early stop or the epoch limit, a checkpoint after each; returns why it
    stopped early (None: the limit)."""
    config, optimizer = job.config, job.learner.optimizer
    stop = early_stop_reason(job.history, optimizer.param_groups[0]["lr"], config) if job.history else None
    while stop is None and len(job.history) < config.epochs:
        if distributed.is_main():  # the epoch the run is in, for `runs` and whoever reads status.json
            job.run.write_status("running", epoch=len(job.history), current_epoch=len(job.history) + 1)
        record = _epoch(job, len(job.history) + 1, io)
        check_divergence(record, job.history, len(job.splits.classes))  # before the checkpoint: a resume starts sane
        job.history.append(record)
        _save_checkpoint(job)
        if distributed.is_main():
            job.run.append_epoch(record)
        if io.on_epoch is not None:
            io.on_epoch(record)
        io.log(_epoch_line(record, config.epochs))
        stop = early_stop_reason(job.history, optimizer.param_groups[0]["lr"], config)
    return stop


def _epoch(job: Job, epoch: int, io: Io) -> dict:
    """Train one epoch and validate; the epoch's record for metrics.jsonl."""
    config, learner, splits = job.config, job.learner, job.splits
    start = time.perf_counter()
    record = train_epoch(learner, splits, config, f"epoch {epoch}/{config.epochs}", io.progress, epoch, io.log)
    if epoch == config.epochs and learner.lookahead is not None:
        learner.lookahead.finish()  # evaluate and keep the slow weights
    distributed.broadcast_buffers(learner.model)  # DDP: rank 0's BatchNorm statistics everywhere
    train_seconds = time.perf_counter() - start
    lr = learner.optimizer.param_groups[0]["lr"]
    if len(splits.val_x):  # validation computes in the training dtype: it is part of training
        val = evaluate_sharded(
            learner.model,
            splits.val_x,
            splits.val_y,
            MEAN,
            STD,
            amp=job.train_dtype == "bfloat16",
            batch_size=config.eval_batch_size,
            channels_last=config.channels_last,
        )
        record.update(val_loss=val.loss, val_accuracy=val.accuracy)
        learner.schedule.after_epoch(val.loss)  # DDP: the same loss on every process
    else:
        record.update(val_loss=None, val_accuracy=None)
        learner.schedule.after_epoch(record["train_loss"])
    seconds = time.perf_counter() - start
    elapsed = (job.history[-1]["elapsed_seconds"] if job.history else 0.0) + seconds
    return {"epoch": epoch, "lr": lr, **record, "train_seconds": train_seconds, "epoch_seconds": seconds, "elapsed_seconds": elapsed}


def _save_checkpoint(job: Job) -> None:
    processes = distributed.process_rng_states()  # DDP: a collective, so every process calls it
    if not distributed.is_main():
        return
    state = job.learner.state_dict()
    if processes is not None:
        state["rng"]["processes"] = processes  # DDP: every process's dropout RNG, for an exact resume
    job.run.save_checkpoint({**state, "history": job.history, "epoch": len(job.history), "config": job.config.to_dict(), "meta": job.meta})


def _test(job: Job, stop: str | None, compile_seconds: float | None, setup_seconds: float, started: float) -> dict:
    """The final test evaluation, in float32 exactly as `cifarlab evaluate`, predict, serve and
    export compute, with the preset's TTA; returns results.json's contents."""
    config, splits = job.config, job.splits
    eval_start = time.perf_counter()
    test = evaluate_sharded(
        job.learner.model,
        splits.test_x,
        splits.test_y,
        MEAN,
        STD,
        tta=config.tta,
        batch_size=config.eval_batch_size,
        channels_last=config.channels_last,
    )
    results = results_record(job.history, test, splits, config, job.params, splits.test_x.device)
    results.update(autocast_dtype=job.train_dtype, eval_dtype="float32", deterministic=config.deterministic)
    results.update(stopped_early=stop is not None, stop_epoch=len(job.history), stop_reason=stop or f"reached the {config.epochs}-epoch limit")
    results["eval_seconds"] = time.perf_counter() - eval_start
    results["compile_seconds"] = compile_seconds  # apart from train_seconds; None when not compiled
    results["timing"] = time_split(job.history, setup_seconds, results["eval_seconds"], time.perf_counter() - started)
    return results


@contextlib.contextmanager
def _determinism(config: TrainConfig, log: Callable[[str], None]) -> Iterator[None]:
    """--deterministic: PyTorch's deterministic algorithms for the training; at the end, one line
    naming the operations that have no deterministic implementation (warned, not refused)."""
    if not config.deterministic:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        ops = sorted({str(w.message).split(" does not have a deterministic")[0] for w in caught if "does not have a deterministic" in str(w.message)})
        log(
            "deterministic: every operation ran deterministically"
            if not ops
            else f"deterministic: no deterministic implementation for {', '.join(ops)} (ran anyway)"
        )


def _epoch_line(r: dict, epochs: int) -> str:
    val = f" val loss {r['val_loss']:.4f} acc {r['val_accuracy']:.2%}" if r["val_accuracy"] is not None else ""
    return (
        f"epoch {r['epoch']}/{epochs} lr {r['lr']:.4g} train loss {r['train_loss']:.4f} "
        f"acc {r['train_accuracy']:.2%}{val} ({r['epoch_seconds']:.1f}s)"
    )
