"""`method = "tpe"`: Optuna's TPE sampler proposes each trial from the results of those before it.

The study lives in the sweep folder (optuna.db, SQLite, under the spec's study name), so running
the same command again continues it, up to `trials` trials in all:

- trials that finished or failed are kept as they are: not retrained, not retried (a failed trial
  is an answer too: the sampler learns to avoid its region, and it counts against the budget);
- a trial that a kill or Ctrl-C interrupted (still RUNNING in the study) is resumed from its last
  saved epoch, keeping its number and values, as an interrupted variant of a grid sweep is;
- a trial is a variant named trial-NNN (its number in the study) with its values as overrides, run
  by the sweep's machinery; the study is told its final validation accuracy (maximised), or that it
  failed (an error, a diverged loss), and sweep.json and the leaderboard record it the same way.

One trial at a time (each trial's values depend on the results before it): --parallel is refused,
and a second search on the same folder is refused while one runs. The sampler is seeded from
(seed, trials already in the study): a search run in one go is reproducible from its seed, and a
continued one does not replay the random start-up draws of its first run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from cifarlab.experiments.runs import load_run
from cifarlab.experiments.space import SpaceError, require_optuna, trial_name
from cifarlab.experiments.sweep import (
    SweepError,
    SweepSpec,
    Variant,
    listing,
    open_state,
    plural,
    recorder,
    run_variant,
    save_state,
    sweep_folder,
    trial_variant,
    variant_name,
    variant_state,
    variant_task,
    write_leaderboard,
)

STUDY_DB = "optuna.db"
SEARCH_LOCK = ".search.lock"
STATE_NAMES = {"COMPLETE": "finished", "FAIL": "failed", "PRUNED": "failed", "RUNNING": "interrupted", "WAITING": "waiting"}


def run_tpe(
    spec: SweepSpec,
    out: Path | str | None = None,
    data_dir: Path | str | None = None,
    device: str = "auto",
    parallel: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Resume the study's interrupted trials, ask for new ones up to the budget, then write the
    leaderboard of all its trials; returns its rows."""
    from cifarlab.data import load_cifar10

    if parallel != 1:
        raise SweepError(f"--parallel {parallel}: a tpe search runs one trial at a time (each trial's values come from "
                         "the results before it); method = \"random\" runs trials side by side")
    optuna = _optuna(spec)
    folder = sweep_folder(spec, out)
    folder.mkdir(parents=True, exist_ok=True)
    with _search_lock(folder):
        study = open_study(optuna, spec, folder)
        state = open_state(spec, folder)
        interrupted = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        to_ask = max(0, spec.search.trials - len(study.trials))
        done = len(study.trials) - len(interrupted)
        log(f"sweep {spec.path.name}: tpe study {spec.search.study!r} in {folder / STUDY_DB}; "
            f"{done:,} of {plural(spec.search.trials, 'trial')} done, {len(interrupted):,} to resume, {to_ask:,} to ask")
        save_state(folder, state)
        data = load_cifar10(data_dir) if interrupted or to_ask else None  # missing data: one error, before any trial
        runner = TrialRunner(optuna, spec, study, folder, state, data, data_dir, device, progress, log)
        for frozen in interrupted:
            runner.resume(frozen)
        while len(study.trials) < spec.search.trials:
            runner.ask()
        built: set[str] = set()
        variants = [_board_variant(spec, t, built) for t in study.trials]
    return write_leaderboard(dataclasses.replace(spec, variants=variants), folder, state)


def _optuna(spec: SweepSpec) -> Any:
    try:
        return require_optuna()
    except SpaceError as e:
        raise SweepError(f"{spec.path} {e}") from None


def _board_variant(spec: SweepSpec, trial: Any, built: set[str]) -> Variant:
    overrides = trial_overrides(spec, trial.params)
    try:
        return trial_variant(spec, trial.number, overrides, built)
    except SweepError:  # a trial that failed the checks; the leaderboard needs only its name and values
        return Variant(trial_name(trial.number), overrides, spec.base_config)


@contextlib.contextmanager
def _search_lock(folder: Path) -> Iterator[None]:
    """One search process per sweep folder: a second would resume the first one's running trial.
    An flock, so the kernel lets go of it however the holder dies."""
    with open(folder / SEARCH_LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"{folder}: another `cifarlab sweep` is running this search; one process per study") from None
        yield


def _search_running(folder: Path) -> bool:
    if not (folder / SEARCH_LOCK).exists():
        return False
    with open(folder / SEARCH_LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)  # let go at once, by the close
        except BlockingIOError:
            return True
    return False


# ---------------------------------------------------------------- the study


def study_url(folder: Path) -> str:
    return f"sqlite:///{(folder / STUDY_DB).resolve()}"


def fingerprint(spec: SweepSpec) -> dict:
    """What makes trials comparable: a study is continued only by a spec that agrees on all of it
    (the budget and the seed may change)."""
    return json.loads(json.dumps({
        "base": spec.base, "train_subset": spec.train_subset, "config": spec.base_config.to_dict(), "space": spec.search.space_table(),
    }, default=str))


def _difference(saved: dict, wanted: dict) -> str:
    """The first thing a saved fingerprint and this spec's disagree on, as 'NAME=OLD, the spec now says NEW'."""
    for part in ("base", "train_subset"):
        if saved.get(part) != wanted[part]:
            return f"{part}={saved.get(part)!r}, the spec now says {wanted[part]!r}"
    for part, label in (("config", ""), ("space", "[search.space] ")):
        old, new = saved.get(part, {}), wanted[part]
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return f"{label}{key}={old.get(key)!r}, the spec now says {new.get(key)!r}"
    return "another spec"


def sampler_seed(seed: int, made: int) -> int:
    """The sampler's seed for a run that finds `made` trials in the study: a fresh TPESampler(seed)
    would draw its start-up trials again, the very values of the first ones."""
    return int(np.random.SeedSequence([seed, made]).generate_state(1)[0])


def open_study(optuna: Any, spec: SweepSpec, folder: Path) -> Any:
    """The spec's study in folder/optuna.db, made if need be; SweepError if it was made by a different spec."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our log says what happens to each trial, once
    db = folder / STUDY_DB
    study = optuna.create_study(storage=study_url(folder), study_name=spec.search.study, direction="maximize", load_if_exists=True)
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(spec.search.seed, len(study.trials)))
    saved, wanted = study.user_attrs.get("sweep"), fingerprint(spec)
    if saved is None:
        if study.trials or any(path.name.startswith("trial-") for path in folder.iterdir()):
            raise SweepError(f"{db}: study {spec.search.study!r} was not made by a cifarlab spec, or {folder} holds trials of "
                             "another study; use another --out or study name")
        study.set_user_attr("sweep", wanted)
    elif saved != wanted:
        raise SweepError(f"{db}: study {spec.search.study!r} was made with {_difference(saved, wanted)}; "
                         "use another --out or study name")
    return study


def trial_overrides(spec: SweepSpec, params: dict) -> dict[str, Any]:
    """A trial's values as the spec's fields (only those it was given: a kill can come between two)."""
    return {axis.key: axis.value_of(params[axis.key]) for axis in spec.search.axes if axis.key in params}


# ---------------------------------------------------------------- the trials


@dataclasses.dataclass
class TrialRunner:
    """Trains the trials of one study, one after another, and tells the study how each went."""

    optuna: Any
    spec: SweepSpec
    study: Any
    folder: Path
    state: dict
    data: Any
    data_dir: Path | str | None
    device: str
    progress: bool
    log: Callable[[str], None]

    def __post_init__(self) -> None:
        self.record = recorder(self.spec, self.folder, self.state, self.log)
        self.built: set[str] = set()  # model options checked already

    def ask(self) -> None:
        trial = self.study.ask()
        self._run(trial.number, {axis.key: axis.suggest(trial) for axis in self.spec.search.axes})

    def resume(self, frozen: Any) -> None:
        overrides = trial_overrides(self.spec, frozen.params)
        if len(overrides) < len(self.spec.search.axes):
            self._fail(frozen.number, overrides, "interrupted before all its values were drawn")
            return
        self._run(frozen.number, overrides)

    def _run(self, number: int, overrides: dict[str, Any]) -> None:
        name = trial_name(number)
        self.state["variants"].setdefault(name, {})["overrides"] = overrides
        try:
            variant = trial_variant(self.spec, number, overrides, self.built)
        except SweepError as e:  # values the checks of the space did not reach (between its bounds)
            self._fail(number, overrides, str(e))
            return
        outcome = self._train(number, variant)
        value = load_run(self.folder / name).final_val_accuracy() if outcome["status"] == "finished" else None
        if outcome["status"] == "finished" and value is None:
            outcome = {**outcome, "status": "failed", "reason": "no validation accuracy to rank it by"}
        if value is None:
            self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(number, value)
        self.record(outcome)

    def _train(self, number: int, variant: Variant) -> dict:
        """Train (or resume) the trial's run; a trial whose run finished before a kill is not trained again."""
        state = variant_state(self.spec, variant, self.folder)
        if state == "finished":
            return {"name": variant.name, "status": "finished", "reason": None}
        task = variant_task(self.spec, variant, number, state, self.folder, self.data_dir, self.device)
        self.log(f"[{number + 1}/{self.spec.search.trials}] {variant.name} ({task['action']}, {task['device']}): "
                 f"{variant_name(variant.overrides, list(variant.overrides))}")
        try:
            return run_variant(task, self.log, self.progress, self.data)
        except KeyboardInterrupt:  # left RUNNING in the study: the next run resumes it
            self.record({"name": variant.name, "status": "stopped", "reason": "interrupted"})
            raise

    def _fail(self, number: int, overrides: dict[str, Any], reason: str) -> None:
        self.state["variants"].setdefault(trial_name(number), {})["overrides"] = overrides
        self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
        self.record({"name": trial_name(number), "status": "failed", "reason": reason})


# ---------------------------------------------------------------- --list


def list_trials(spec: SweepSpec, out: Path | str | None) -> str:
    """The study's trials with their state and values, then how many are done and to come; makes nothing."""
    folder = sweep_folder(spec, out)
    trials = _stored_trials(spec, folder)
    running = _search_running(folder)
    rows = []
    for t in trials:
        state = STATE_NAMES.get(t.state.name, t.state.name.lower())
        if state == "interrupted" and running:
            state = "running"
        overrides = trial_overrides(spec, t.params)
        rows.append((trial_name(t.number), state, variant_name(overrides, list(overrides))))
    count = {name: sum(row[1] == name for row in rows) for name in ("finished", "failed", "interrupted", "running")}
    to_ask = max(0, spec.search.trials - len(trials))
    head = f"{plural(spec.search.trials, 'trial')} of a tpe search over {spec.base}, study {spec.search.study!r} in {folder / STUDY_DB}:"
    tail = ", ".join(f"{n:,} {name}" for name, n in count.items() if n or name == "finished")
    return listing(head, rows, f"{tail}, {to_ask:,} to ask")


def _stored_trials(spec: SweepSpec, folder: Path) -> list:
    if not (folder / STUDY_DB).exists():  # opening it would make it
        return []
    optuna = _optuna(spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=spec.search.study, storage=study_url(folder)).get_trials(deepcopy=False)
    except KeyError:  # no study of that name in the file
        return []
