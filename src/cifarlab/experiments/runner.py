"""A sweep's workers: each takes trials from the study's queue until it is empty, trains each
trial's variant into the sweep folder, and tells the study how it went.

`run_trial` is the one place a trial starts and ends (a hook for tracking it elsewhere belongs there).
A trial's run folder is never deleted here: `train()` decides, under the run's own lock, whether a
folder is resumed (it has a checkpoint), started again (it saved no epoch) or refused.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.common.rundir import CONFIG, RESULTS, RunDir
from cifarlab.errors import CifarlabError
from cifarlab.experiments.leaderboard import run_result
from cifarlab.experiments.spec import SweepError, SweepSpec, normal_json, variant_name
from cifarlab.experiments.study import (
    Storage,
    database_errors,
    heartbeat,
    open_storage,
    open_study,
    quiet,
    require_optuna,
    take_trial,
    taking,
    wanted_names,
)
from cifarlab.text import first_problem
from cifarlab.training.config import TrainConfig


@dataclass(frozen=True)
class Worker:
    """What one worker needs (plain values: it may be a process of its own)."""

    spec: SweepSpec
    storage: Storage
    folder: Path
    data_dir: str | None = None
    device: str = "auto"
    progress: bool = True
    number: int = 0  # among this machine's workers: its GPU, its share of the CPU


def check_run_folder(spec: SweepSpec, name: str, config: TrainConfig, folder: Path) -> None:
    """SweepError if `folder/name` holds something other than this variant's run: a run of other
    settings, or files that are not a run."""
    run = RunDir(folder / name)
    if not run.path.exists() or not run.entries():  # its lock file and a killed write's temporaries do not count
        return
    if not run.exists():
        raise SweepError(f"{run.path}: exists but is not a run directory; move it away")
    saved = run.config()
    wanted = normal_json(config.to_dict())
    for key in sorted(set(wanted) | set(saved.get("train", {}))):
        if saved.get("train", {}).get(key) != wanted.get(key):
            raise SweepError(
                f"{run.file(CONFIG)}: variant {name!r} was run with {key}={saved.get('train', {}).get(key)!r}, "
                f"the spec now says {wanted.get(key)!r}; use another --out or move the old run away"
            )
    if saved.get("train_subset") != spec.train_subset:
        raise SweepError(f"{run.file(CONFIG)}: variant {name!r} was run with train_subset={saved.get('train_subset')!r}")


def device_for(number: int, device: str) -> str:
    import torch

    if device == "auto" and torch.cuda.is_available():
        return f"cuda:{number % torch.cuda.device_count()}"
    return device


def sampler_seed(seed: int, made: int, worker: int) -> int:
    """A tpe sampler's seed: a fresh TPESampler(seed) would draw its start-up trials again, the very
    values of the first ones, and two workers would draw the same."""
    return int(np.random.SeedSequence([seed, made, worker]).generate_state(1)[0])


def run_worker(worker: Worker, log: Callable[[str], None] = print) -> int:
    """Take and run trials until the queue is empty and no other worker's trial may still need a
    retry; returns how many this worker ran."""
    from cifarlab.data import load_cifar10

    optuna = require_optuna()
    storage = worker.storage
    rdb = open_storage(storage)
    study = open_study(rdb, storage, worker.spec, create=False)
    if study is None:
        raise SweepError(f"{storage.local_file or storage.shown}: no study {worker.spec.study_name!r}")
    search = worker.spec.search
    if search is not None and search.method == "tpe":  # worker.spec.method, with search narrowed
        made = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        seed = sampler_seed(search.seed, made, worker.number)
        study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # workers side by side draw apart
    data = load_cifar10(worker.data_dir)  # missing data: one error, before any trial is taken
    ran = 0
    while True:
        with database_errors(storage, "lost the study's database"):
            with quiet(optuna):
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and queued again
            with taking(storage):
                trial = take_trial(study, rdb)
            if trial is None:
                if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                    return ran
                time.sleep(min(storage.heartbeat, 2))  # another worker's trial may yet fail and come back
                continue
        run_trial(worker, study, rdb, trial, data, log)
        ran += 1


def run_trial(worker: Worker, study: Any, rdb: Any, trial: Any, data: Any, log: Callable[[str], None]) -> dict:
    """Train one trial's variant (resuming its run folder if it has a checkpoint) and tell the study;
    returns its outcome. Ctrl-C leaves it failed and queued again, so the next run resumes it."""
    optuna = require_optuna()
    name = trial.user_attrs["variant"]
    out = worker.folder / name
    with database_errors(worker.storage, f"lost the study's database during {name}"), heartbeat(rdb, trial):
        overrides = _overrides(worker.spec, trial)
        trial.set_user_attr("run", str(out.resolve()))
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")  # which worker ran it (a retry shows another)
        names = wanted_names(worker.spec)
        where = f"{names.index(name) + 1}/{len(names)}" if name in names else f"?/{len(names)}"
        log(f"[{where}] {name} ({device_for(worker.number, worker.device)}): {variant_name(overrides, list(overrides))}")
        try:
            reason = _train(worker, name, overrides, data, log)
        except KeyboardInterrupt:
            trial.set_user_attr("reason", "interrupted")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            rdb.get_heartbeat_stale_trial_callback()(study, rdb.get_trial(trial._trial_id))  # queued again
            raise
        result = run_result(out)
        if reason is None and result["val_accuracy"] is None:
            reason = "no validation accuracy to rank it by"
        search = worker.spec.search
        over = bool(search and search.over_budget(result["train_seconds"]))
        result = {**result, "status": "failed" if reason else "finished", "reason": reason, "over_budget": over}
        trial.set_user_attr("result", result)
        if reason:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, search.score(result["val_accuracy"], result["train_seconds"]) if search else result["val_accuracy"])
    log(f"{worker.spec.unit} {name}: {result['status']}{': ' + reason if reason else ''}")
    return result


def _overrides(spec: SweepSpec, trial: Any) -> dict[str, Any]:
    """The trial's values: enqueued with it, or (a tpe slot) drawn now by the study's sampler and kept
    with the trial (a retry of it suggests the same values again)."""
    if spec.search is None or spec.search.method != "tpe":  # spec.method != "tpe", with search narrowed
        return dict(trial.user_attrs.get("overrides", {}))
    overrides = {axis.key: axis.suggest(trial) for axis in spec.search.axes}
    trial.set_user_attr("overrides", normal_json(overrides))
    return overrides


def _train(worker: Worker, name: str, overrides: dict, data: Any, log: Callable[[str], None]) -> str | None:
    """Train, resume or (finished before a kill) only read the variant's run; None or why it failed."""
    from cifarlab.training.train import resume, train

    spec, out = worker.spec, worker.folder / name
    io = dict(data_dir=worker.data_dir, device=device_for(worker.number, worker.device), progress=worker.progress, log=log, data=data)
    try:
        variant = next((v for v in spec.variants if v.name == name), None)
        config = variant.config if variant else spec.variant_config(overrides, f"[search] {name}")
        check_run_folder(spec, name, config, worker.folder)
        if (out / RESULTS).exists():
            return None
        if RunDir(out).has_checkpoint():
            resume(out, **io)
        else:
            train(config, out, train_subset=spec.train_subset, **io)
        return None
    except KeyboardInterrupt:
        raise
    except Exception as e:  # recorded with the trial, and the sweep goes on
        return f"{type(e).__name__}: {first_problem(e)}" if str(e).strip() else type(e).__name__


# ---------------------------------------------------------------- local workers


def run_workers(worker: Worker, count: int, log: Callable[[str], None]) -> None:
    """`count` workers on this machine: in this process for one, else in processes of their own
    (each with its share of the CPU threads, or its own GPU)."""
    if count == 1:
        run_worker(worker, log)
        return
    threads = max(1, len(os.sched_getaffinity(0)) // count)
    log(f"{count} workers on this machine ({threads} CPU thread(s) each)")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker_main, args=(replace(worker, number=n), threads), name=f"worker-{n}") for n in range(count)]
    for p in processes:
        p.start()
    try:
        for p in processes:
            p.join()
    except KeyboardInterrupt:
        for p in processes:
            p.join()  # each marks its trial for a retry and exits
        raise
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise SweepError(f"{', '.join(failed)} of {count} stopped with an error (above); run the same command again to continue")


def _worker_main(worker: Worker, threads: int) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)  # train's set_cpu_threads respects it
    torch.set_num_threads(threads)
    prefix = f"[worker {worker.number}] "
    try:
        run_worker(worker, lambda line: print(prefix + line, flush=True))
    except CifarlabError as e:
        sys.stderr.write(f"{prefix}error: {e}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
