"""`cifarlab sweep SPEC.toml`: every variant of a spec (spec.py) as a trial of one Optuna study
(study.py), trained by one or more workers (runner.py) into one sweep folder, and ranked on a
leaderboard (leaderboard.py).

    cifarlab sweep SPEC                          # the study in SWEEP/optuna.db, one worker
    cifarlab sweep SPEC --workers 2              # two workers on this machine, one study
    cifarlab sweep SPEC --storage postgresql+psycopg://user:pw@db-host/sweeps
                                                 # the same command on every machine: they share the trials
    cifarlab sweep SPEC --list / --leaderboard   # from the study alone

Running the same command again continues the study: finished trials are kept, a trial that a kill
or Ctrl-C interrupted is queued again and resumes its run folder from its last saved epoch, and a
failed one stays failed (`--retry-failed` queues it again). A folder lock keeps a second sweep off a
folder whose SQLite study is in use; workers sharing a database server take a shared one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cifarlab.common.files import try_lock
from cifarlab.experiments.leaderboard import (
    LEADERBOARD,
    LEADERBOARD_JSON,
    format_leaderboard,
    listing,
    rows_from_folders,
    rows_from_trials,
    write_leaderboard,
)
from cifarlab.experiments.runner import Worker, check_run_folder, run_workers
from cifarlab.experiments.spec import (
    MAX_VARIANTS,
    SweepError,
    SweepSpec,
    load_spec,
    variant_name,
)
from cifarlab.experiments.study import (
    STUDY_DB,
    Storage,
    database_errors,
    enqueue,
    fail_orphans,
    latest_trials,
    open_storage,
    open_study,
    storage_for,
    wanted_names,
)
from cifarlab.text import plural
from cifarlab.training.tracking import sweep_parent_run

__all__ = [
    "LEADERBOARD",
    "LEADERBOARD_JSON",
    "MAX_VARIANTS",
    "STUDY_DB",
    "SweepError",
    "format_leaderboard",
    "list_variants",
    "load_spec",
    "rebuild_leaderboard",
    "rows_from_folders",
    "run_sweep",
]
SWEEP_LOCK = ".sweep.lock"


def sweep_folder(spec: SweepSpec, out: Path | str | None) -> Path:
    return Path(out) if out else spec.path.parent / spec.path.stem


@contextlib.contextmanager
def folder_lock(folder: Path, exclusive: bool) -> Iterator[None]:
    """One sweep at a time in a folder whose study is its own SQLite file (exclusive); with a database
    server, any number of workers (shared), but none beside a sweep that holds it alone. An flock:
    the kernel lets go of it however the holder dies."""
    with open(folder / SWEEP_LOCK, "a") as lock:
        try:
            taken = try_lock(lock.fileno(), shared=not exclusive)
        except OSError as e:
            raise SweepError(f"{folder / SWEEP_LOCK}: cannot lock it ({e.strerror})") from None
        if not taken:
            raise SweepError(
                f"{folder}: another `cifarlab sweep` is running in this folder; wait for it, or add workers "
                "to it with --workers or a shared --storage"
            )
        yield


def run_sweep(
    spec: SweepSpec,
    out: Path | str | None = None,
    data_dir: Path | str | None = None,
    device: str = "auto",
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
    storage: str | None = None,
    heartbeat: int = 30,
    retry_failed: bool = False,
) -> list[dict]:
    """Queue the spec's trials that the study lacks, run the queue with `workers` workers, then write
    the leaderboard of the whole study; returns its rows."""
    if workers < 1:
        raise SweepError(f"--workers must be at least 1, got {workers}")
    from cifarlab.experiments import pages  # noqa: F401  (without matplotlib: fail now, not after training)

    folder = sweep_folder(spec, out)
    where = storage_for(storage, folder, heartbeat)
    for v in spec.variants:  # an old run of other settings under a variant's name: refused before anything trains
        check_run_folder(spec, v.name, v.config, folder)
    rdb = None if where.local_file else open_storage(where)  # a bad or unreachable server: said before a folder is made
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder, exclusive=where.local_file is not None):
        rdb = rdb or open_storage(where)
        study = open_study(rdb, where, spec)
        with database_errors(where, "cannot read the study"):
            if where.local_file:
                fail_orphans(study, rdb)  # left RUNNING by a killed sweep: no one else can be running them
            added = enqueue(rdb, where, study, spec, retry_failed)
            trials = latest_trials(study.get_trials(deepcopy=False))
        done = sum(t.state.name == "COMPLETE" for t in trials.values())
        log(
            f"sweep {spec.path.name}: {plural(spec.size, spec.unit)} in {folder}, study {spec.study_name!r} in {where.shown}; "
            f"{done:,} finished already, {spec.size - done:,} to run ({added:,} newly queued)"
        )
        worker = Worker(spec, where, folder, None if data_dir is None else str(data_dir), device, progress)
        # With `mlflow` set (a spec's [fixed]), the sweep is one parent MLflow run and every trial's
        # training, in this process or a worker, logs as its child (training/tracking.py).
        with sweep_parent_run(folder, spec.base_config, log, (LEADERBOARD, LEADERBOARD_JSON)):
            run_workers(worker, workers, log)
            return _write_board(spec, folder, where, rdb, study)


def _write_board(spec: SweepSpec, folder: Path, where: Storage, rdb: Any, study: Any) -> list[dict]:
    with database_errors(where, "cannot read the study"):
        trials = latest_trials(study.get_trials(deepcopy=False))
    return write_leaderboard(spec, folder, rows_from_trials(wanted_names(spec), trials))


def _stored(spec: SweepSpec, where: Storage) -> dict[str, Any]:
    """The study's trials by variant, from its storage alone; none where it was never made (made now: nothing)."""
    rdb = open_storage(where, create=where.local_file is None)  # the folder's file is not made just to list it
    if rdb is None:
        return {}
    study = open_study(rdb, where, spec, create=False)
    if study is None:
        return {}
    with database_errors(where, "cannot read the study"):
        return latest_trials(study.get_trials(deepcopy=False))


def rebuild_leaderboard(spec: SweepSpec, out: Path | str | None = None, storage: str | None = None) -> list[dict]:
    """`--leaderboard`: the pages written again from the study's storage alone (on any machine)."""
    folder = sweep_folder(spec, out)
    where = storage_for(storage, folder)
    return write_leaderboard(spec, folder, rows_from_trials(wanted_names(spec), _stored(spec, where)))


def list_variants(spec: SweepSpec, out: Path | str | None = None, storage: str | None = None) -> str:
    """`--list`: each variant (a search's trials with their values) and its state in the study, then the counts."""
    folder = sweep_folder(spec, out)
    where = storage_for(storage, folder)
    rows = rows_from_trials(wanted_names(spec), _stored(spec, where))
    by_name = {r["name"]: r for r in rows}
    names = list(dict.fromkeys([*wanted_names(spec), *by_name]))
    keys = [axis.key for axis in spec.search.axes] if spec.search else []
    values = {v.name: v.overrides for v in spec.variants}
    lines = [(n, by_name[n]["status"], variant_name(by_name[n]["overrides"] or values.get(n, {}), keys) if keys else "") for n in names]
    done = sum(state == "finished" for _, state, _ in lines)
    head = f"{spec.describe(spec.size)} in {folder}; study {spec.study_name!r} in {where.shown}:"
    return listing(head, lines, f"{done:,} finished, {len(lines) - done:,} to run")
