"""`cifarlab sweep SPEC.toml`: train the variants of a base preset one after another (or N at a
time), each in its own run directory under one sweep folder, and rank them on a leaderboard.

    base = "paper"                      # preset name
    train_subset = 5000                 # optional: first N training images only
    [fixed]                             # applied to every variant
    epochs = 2
    [grid]                              # cartesian product of these values
    lr = [0.01, 0.05]
    "model_options.fc_dropout" = [0.3, 0.5]
    [[variants]]                        # and/or an explicit list (optional "name")
    name = "wide"
    "model_options.widths" = [64, 64, 128, 128, 256, 256, 256]

Instead of [grid] and [[variants]], a [search] table asks for a random or TPE search with a trial
budget (space.py has its format; search.py runs TPE); a trial is a variant named trial-NNN.

Every variant is checked (TrainConfig field names and values, and that its model builds with
its options) before anything runs; errors name the spec file and the field. A spec of more than
1,000 variants is refused unless --yes. Restarting a sweep skips the variants that finished
(results.json present), resumes the interrupted ones from their checkpoint, and retries the
failed ones. A variant that fails is recorded with its reason and
the sweep goes on. The leaderboard ranks by final validation accuracy, the accuracy of the very
model whose test accuracy it shows; test accuracy is shown and never used to rank.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from cifarlab.common.rundir import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    RESULTS,
    STATUS,
    RunDir,
)
from cifarlab.common.files import RunError, atomic_write_json
from cifarlab.errors import CifarlabError
from cifarlab.experiments.runs import load_run
from cifarlab.experiments.space import Search, SpaceError, parse_search, require_optuna, trial_name
from cifarlab.models import ModelError, build_model
from cifarlab.training.config import ConfigError, TrainConfig, apply_overrides, get_preset

STATE = "sweep.json"
LEADERBOARD = "leaderboard.html"
LEADERBOARD_JSON = "leaderboard.json"
FIGURES = {"ranking": "leaderboard-ranking.png", "curves": "leaderboard-curves.png"}
SPEC_KEYS = ("base", "train_subset", "fixed", "grid", "variants", "search")
# A larger spec needs --yes: at minutes per variant, a grid one list too long would queue months.
MAX_VARIANTS = 1000


class SweepError(CifarlabError, ValueError):
    """A bad sweep spec or sweep folder; the message is one line naming the file and the field."""


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any]  # dotted field names -> values: what sets this variant apart
    config: TrainConfig


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    base: str
    train_subset: int | None
    fixed: dict[str, Any]
    variants: list[Variant]  # a tpe search's grow as its study asks for trials: none in the spec itself
    base_config: TrainConfig  # the base preset with [fixed] applied
    search: Search | None = None

    @property
    def method(self) -> str:
        return self.search.method if self.search else "grid"

    @property
    def unit(self) -> str:
        return "trial" if self.search else "variant"

    def describe(self, count: int) -> str:
        """'5 variants of the paper preset', '20 trials of a random search over the paper preset'."""
        of = f"of a {self.method} search over" if self.search else "of"
        return f"{plural(count, self.unit)} {of} the {self.base} preset"


# ---------------------------------------------------------------- the spec


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    """{"model_options": {"widths": [..]}} -> {"model_options.widths": [..]}; quoted dotted keys pass through."""
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _apply(base: dict, overrides: dict[str, Any], where: str, built: set[str]) -> TrainConfig:
    """The base config dict with dotted overrides applied, checked by TrainConfig and the model registry."""
    try:
        config = apply_overrides(TrainConfig.from_dict(base, source=where), overrides, source=where)
    except ConfigError as e:
        raise SweepError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    _check_model(config, where, built)
    return config


def _check_model(config: TrainConfig, where: str, built: set[str]) -> None:
    """Build the model once per distinct options (`built` holds those of this spec), so a typo or a
    bad width fails before any training. On the meta device: shapes only, no memory, milliseconds."""
    key = json.dumps([config.model, config.model_options], sort_keys=True, default=repr)  # repr: TOML dates
    if key in built:
        return
    try:
        with torch.device("meta"):
            build_model(config.model, **config.model_options)
    except (ModelError, ValueError, TypeError, RuntimeError) as e:  # RuntimeError: torch's, e.g. a width too large
        raise SweepError(f"{where}: model_options: {str(e).strip().splitlines()[0]}") from None
    built.add(key)


def _short(key: str, keys: list[str]) -> str:
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(_value_text(v) for v in value)
    return str(value).replace("/", "_").replace(" ", "_")


def variant_name(overrides: dict[str, Any], keys: list[str]) -> str:
    """Readable, stable: 'lr=0.05,fc_dropout=0.3' (a field's last dotted part unless that is ambiguous)."""
    return ",".join(f"{_short(k, keys)}={_value_text(v)}" for k, v in overrides.items()) or "base"


def plural(count: int, noun: str) -> str:
    """'1 variant', '2 variants', '40,000 variants'."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: not found") from None
    except IsADirectoryError:
        raise SweepError(f"{path}: is a folder; name a sweep spec (a .toml file)") from None
    except OSError as e:
        raise SweepError(f"{path}: cannot read it ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SweepError(f"{path}: not valid TOML ({e})") from None


def _base_config(path: Path, raw: dict) -> tuple[str, dict]:
    """The base preset's name and its config as a dict."""
    base_name = raw.get("base")
    if not isinstance(base_name, str):
        raise SweepError(f"{path}: base must be a preset name, e.g. base = \"paper\"")
    try:
        return base_name, get_preset(base_name).to_dict()
    except ConfigError as e:
        raise SweepError(f"{path}: base: {e}") from None


def _grid(path: Path, raw: dict) -> dict[str, list]:
    grid = _flatten(raw.get("grid", {}))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path} [grid]: {key} must be a non-empty list of values, got {values!r}")
    return grid


def _check_size(path: Path, grid: dict[str, list], listed: list, max_variants: int | None) -> None:
    """Refuse a spec of more than `max_variants` variants, counted before any is made (a grid of
    a million would take minutes and gigabytes just to list)."""
    from_grid = math.prod(len(values) for values in grid.values()) if grid else 0
    total = from_grid + len(listed)
    if max_variants is not None and total > max_variants:
        parts = " x ".join(f"{len(v):,}" for v in grid.values()) + (f" + {len(listed):,} listed" if listed else "")
        raise SweepError(f"{path}: {plural(total, 'variant')} ({parts}) is more than {max_variants:,}; pass --yes to sweep them all")


def _grid_variants(path: Path, base: TrainConfig, grid: dict[str, list], built: set[str]) -> list[Variant]:
    """Every combination of the grid's values, in time linear in their number: each value was checked
    on its own (TrainConfig checks fields independently of each other), each one's part of a name is
    written once, and the model is built once per distinct combination of model options."""
    _check_model_combinations(path, base, grid, built)
    keys = list(grid)
    choices = [[(value, f"{_short(key, keys)}={_value_text(value)}") for value in grid[key]] for key in keys]
    variants = []
    for combo in itertools.product(*choices):
        overrides = dict(zip(keys, (value for value, _ in combo)))
        variants.append(Variant(",".join(part for _, part in combo), overrides, _combine(base, overrides)))
    return variants


def _check_model_combinations(path: Path, base: TrainConfig, grid: dict[str, list], built: set[str], section: str = "[grid]") -> None:
    """Options of one model can clash where each alone is fine (widths for the other model): build
    every combination of the grid's values that reach the model, and only those."""
    keys = [key for key in grid if key == "model" or key.partition(".")[0] == "model_options"]
    for combo in itertools.product(*(grid[key] for key in keys)):
        overrides = dict(zip(keys, combo))
        _check_model(_combine(base, overrides), f"{path} {section} {variant_name(overrides, keys)}", built)


def _combine(base: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """`base` with overrides applied as apply_overrides does, without checking each value again (each
    was checked alone, so a dotted key is model_options.NAME): the per-variant cost of a large grid."""
    fields: dict[str, Any] = {}
    options = dict(base.model_options)
    for key, value in overrides.items():
        if "." in key:
            options[key.partition(".")[2]] = value
        elif key == "model_options":
            options = dict(value)
        else:
            fields[key] = value
    return dataclasses.replace(base, **fields, model_options=options)


def _listed_variants(path: Path, base: dict, listed: list[dict], built: set[str]) -> list[Variant]:
    variants = []
    for n, table in enumerate(listed, 1):
        table = dict(table)
        given = table.pop("name", None)
        overrides = _flatten(table)
        name = given if isinstance(given, str) and given else variant_name(overrides, list(overrides))
        if name in (".", "..") or "/" in name:
            raise SweepError(f"{path} [[variants]] #{n}: bad name {name!r}")
        variants.append(Variant(name, overrides, _apply(base, overrides, f"{path} [[variants]] #{n} ({name})", built)))
    return variants


def load_spec(path: Path | str, max_variants: int | None = MAX_VARIANTS) -> SweepSpec:
    """Parse and check a sweep spec; SweepError naming the file and field on any problem.

    Checking takes time linear in the number of variants: each grid value is checked once, and
    each distinct set of model options is built once. More than `max_variants` (None: no limit)
    variants are refused before any is made.
    """
    path = Path(path)
    raw = _read_toml(path)
    for key in raw:
        if key not in SPEC_KEYS:
            raise SweepError(f"{path}: unknown key {key!r}; a spec has {', '.join(SPEC_KEYS)}")
    base_name, base = _base_config(path, raw)
    subset = raw.get("train_subset")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise SweepError(f"{path}: train_subset must be a positive integer, got {subset!r}")
    for section in ("fixed", "grid"):
        if not isinstance(raw.get(section, {}), dict):
            raise SweepError(f"{path}: {section} must be a table ([{section}])")
    built: set[str] = set()  # model options already built, for this spec only
    fixed = _flatten(raw.get("fixed", {}))
    base_config = _apply(base, fixed, f"{path} [fixed]", built)
    base = base_config.to_dict()
    grid = _grid(path, raw)
    listed = raw.get("variants", [])
    if not isinstance(listed, list) or not all(isinstance(v, dict) for v in listed):
        raise SweepError(f"{path}: variants must be an array of tables ([[variants]])")
    search = _search(path, raw, grid, listed)
    if search:
        return _search_spec(path, base_name, subset, fixed, base_config, search, max_variants, built)
    if not grid and not listed:
        raise SweepError(f"{path}: nothing to sweep; add a [grid] table, [[variants]] tables or a [search] table")
    _check_size(path, grid, listed, max_variants)
    for key, values in grid.items():
        for value in values:
            _apply(base, {key: value}, f"{path} [grid] {key} = {value!r}", built)
    variants = _grid_variants(path, base_config, grid, built) if grid else []
    variants += _listed_variants(path, base, listed, built)
    seen: set[str] = set()
    for v in variants:
        if v.name in seen:
            raise SweepError(f"{path}: two variants are named {v.name!r}; give [[variants]] distinct names")
        seen.add(v.name)
    return SweepSpec(path, base_name, subset, fixed, variants, base_config)


# ---------------------------------------------------------------- a [search] spec


def _search(path: Path, raw: dict, grid: dict, listed: list) -> Search | None:
    if "search" not in raw:
        return None
    if grid or listed:
        raise SweepError(f"{path}: a [search] makes its own trials; put [grid] and [[variants]] in another spec")
    try:
        search = parse_search(raw["search"], default_study=path.stem)
        if search.method == "tpe":
            require_optuna()  # now, not after the first trial's training
    except SpaceError as e:
        raise SweepError(f"{path} {e}") from None
    return search


def _search_spec(path: Path, base_name: str, subset: int | None, fixed: dict, base_config: TrainConfig, search: Search,
                 max_variants: int | None, built: set[str]) -> SweepSpec:
    if max_variants is not None and search.trials > max_variants:
        raise SweepError(f"{path}: [search] trials = {search.trials:,} is more than {max_variants:,}; pass --yes to run them all")
    _check_space(path, base_config, search, built)
    # a tpe study asks for its trials as it goes; random ones are known now
    trials = _random_trials(path, base_config.to_dict(), search, built) if search.method == "random" else []
    return SweepSpec(path, base_name, subset, fixed, trials, base_config, search)


def _check_space(path: Path, base_config: TrainConfig, search: Search, built: set[str]) -> None:
    """Check the space as a grid is checked: each axis's bounds and middle (or each choice) alone,
    then the combinations of choices and bounds that reach the model. Trials rank by validation accuracy, so each
    needs validation images."""
    base = base_config.to_dict()
    values = {axis.key: axis.checked_values() for axis in search.axes}
    if "val_size" not in values and base_config.val_size < 1:
        raise SweepError(f"{path} [fixed]: val_size = {base_config.val_size} leaves no validation images to rank the trials by")
    for key, candidates in values.items():
        for value in candidates:
            where = f"{path} [search.space] {key} = {value!r}"
            if _apply(base, {key: value}, where, built).val_size < 1:
                raise SweepError(f"{where}: leaves no validation images to rank the trials by")
    combined = {axis.key: axis.combined_values() for axis in search.axes}
    _check_model_combinations(path, base_config, combined, built, "[search.space]")


def _random_trials(path: Path, base: dict, search: Search, built: set[str]) -> list[Variant]:
    """The random search's trials, each checked in full (values between those checked included)."""
    keys = [axis.key for axis in search.axes]
    trials = []
    for i in range(search.trials):
        name, overrides = trial_name(i), search.random_overrides(i)
        trials.append(Variant(name, overrides, _apply(base, overrides, f"{path} [search] {name} ({variant_name(overrides, keys)})", built)))
    return trials


def trial_variant(spec: SweepSpec, number: int, overrides: dict[str, Any], built: set[str]) -> Variant:
    """Trial `number` of a tpe search with the values its study gave it; SweepError if they fail the checks."""
    name = trial_name(number)
    return Variant(name, overrides, _apply(spec.base_config.to_dict(), overrides, f"{spec.path} [search] {name}", built))


# ---------------------------------------------------------------- running


def sweep_folder(spec: SweepSpec, out: Path | str | None) -> Path:
    return Path(out) if out else spec.path.parent / spec.path.stem


def _normal(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def variant_state(spec: SweepSpec, variant: Variant, folder: Path) -> str:
    """finished / interrupted (resumable) / empty (started, no epoch saved) / pending; SweepError if the
    folder holds a run of a different config under this variant's name."""
    run = RunDir(folder / variant.name)
    if not run.path.exists():
        return "pending"
    if not run.exists():
        if run.entries():  # its lock file and a killed write's temporaries do not count
            raise SweepError(f"{run.path}: exists but is not a run directory; move it away")
        return "empty"
    saved = run.config()
    wanted = _normal(variant.config.to_dict())
    for key in sorted(set(wanted) | set(saved.get("train", {}))):
        if saved.get("train", {}).get(key) != wanted.get(key):
            raise SweepError(
                f"{run.file(CONFIG)}: variant {variant.name!r} was run with {key}={saved.get('train', {}).get(key)!r}, "
                f"the spec now says {wanted.get(key)!r}; use another --out or move the old run away"
            )
    if saved.get("train_subset") != spec.train_subset:
        raise SweepError(f"{run.file(CONFIG)}: variant {variant.name!r} was run with train_subset={saved.get('train_subset')!r}")
    if run.file(RESULTS).exists():
        return "finished"
    if run.file(CHECKPOINT).exists():
        return "interrupted"
    extra = [name for name in run.entries() if name not in (CONFIG, METRICS, STATUS)]
    if extra:  # restarting would delete these
        raise SweepError(f"{run.path}: holds {', '.join(extra)} but no checkpoint; move it away to rerun variant {variant.name!r}")
    return "empty"


def _device_for(index: int, device: str) -> str:
    import torch

    if device == "auto" and torch.cuda.is_available():
        return f"cuda:{index % torch.cuda.device_count()}"
    return device


def run_variant(task: dict, log: Callable[[str], None], progress: bool, data: Any = None) -> dict:
    """Train one variant (resuming if interrupted) on `data` (None: train loads it from the task's
    data_dir); never raises except KeyboardInterrupt."""
    from cifarlab.training.train import resume, train

    out = Path(task["out"])
    io = dict(data_dir=task["data_dir"], device=task["device"], progress=progress, log=log, data=data)
    try:
        if task["action"] == "restart":
            shutil.rmtree(out)  # holds only config/metrics/status of a run that saved no epoch
        if task["action"] == "resume":
            resume(out, **io)
        else:
            train(TrainConfig.from_dict(task["config"]), out, train_subset=task["train_subset"], **io)
        return {"name": task["name"], "status": "finished", "reason": None}
    except KeyboardInterrupt:
        raise
    except Exception as e:  # recorded, and the sweep goes on
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}".rstrip(": ")
        return {"name": task["name"], "status": "failed", "reason": reason}


def _worker_init(threads: int) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)  # train's set_cpu_threads respects it
    torch.set_num_threads(threads)


def _worker(task: dict) -> dict:
    """A worker process's variant; it loads the data itself (seconds, against minutes of training)
    rather than keep it in a process-wide cache that outlives the sweep."""
    prefix = f"[{task['name']}] "
    return run_variant(task, lambda s: print(prefix + s, flush=True), progress=False)


def run_sweep(
    spec: SweepSpec,
    out: Path | str | None = None,
    data_dir: Path | str | None = None,
    device: str = "auto",
    parallel: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run every variant not yet finished, then write the leaderboard; returns its rows. A tpe
    search runs in search.py, one trial at a time."""
    from cifarlab.data import load_cifar10
    from cifarlab.experiments import pages  # noqa: F401  (without matplotlib: fail now, not after training)

    if parallel < 1:
        raise SweepError(f"--parallel must be at least 1, got {parallel}")
    if spec.method == "tpe":
        from cifarlab.experiments.search import run_tpe  # search.py builds on this module

        return run_tpe(spec, out, data_dir, device, parallel, progress, log)
    folder = sweep_folder(spec, out)
    states = {v.name: variant_state(spec, v, folder) for v in spec.variants}  # checks every old run first
    folder.mkdir(parents=True, exist_ok=True)
    state = open_state(spec, folder)
    records = state["variants"]
    tasks = []
    for i, v in enumerate(spec.variants):
        records.setdefault(v.name, {})["overrides"] = v.overrides
        if states[v.name] == "finished":
            records[v.name].update(status="finished", reason=None)
            continue
        tasks.append(variant_task(spec, v, i, states[v.name], folder, data_dir, device))
    skipped = len(spec.variants) - len(tasks)
    log(f"sweep {spec.path.name}: {plural(len(spec.variants), spec.unit)} in {folder}; {skipped:,} finished already, {len(tasks):,} to run")
    save_state(folder, state)
    # missing data is one error for the sweep (and a download happens once, here); this sweep's
    # variants in this process share the loaded set, and it goes when the sweep returns
    data = load_cifar10(data_dir) if tasks else None
    record = recorder(spec, folder, state, log)
    if parallel == 1 or len(tasks) <= 1:
        for n, task in enumerate(tasks, 1):
            log(f"[{n}/{len(tasks)}] {task['name']} ({task['action']}, {task['device']})")
            try:
                record(run_variant(task, log, progress, data))
            except KeyboardInterrupt:
                record({"name": task["name"], "status": "stopped", "reason": "interrupted"})
                raise
    else:
        _run_parallel(tasks, parallel, record, log)
    return write_leaderboard(spec, folder, state)


def variant_task(spec: SweepSpec, variant: Variant, index: int, state: str, folder: Path, data_dir: Path | str | None, device: str) -> dict:
    """What run_variant needs (plain values, for a worker process) to train a variant not yet finished."""
    action = {"pending": "start", "empty": "restart", "interrupted": "resume"}[state]
    return {"name": variant.name, "index": index, "out": str(folder / variant.name), "action": action,
            "config": variant.config.to_dict(), "data_dir": None if data_dir is None else str(data_dir),
            "device": _device_for(index, device), "train_subset": spec.train_subset}


def recorder(spec: SweepSpec, folder: Path, state: dict, log: Callable[[str], None]) -> Callable[[dict], None]:
    """A function that records a variant's outcome in sweep.json and says it."""
    records = state["variants"]

    def record(outcome: dict) -> None:
        records.setdefault(outcome["name"], {}).update(status=outcome["status"], reason=outcome["reason"])
        save_state(folder, state)
        tail = f": {outcome['reason']}" if outcome["reason"] else ""
        log(f"{spec.unit} {outcome['name']}: {outcome['status']}{tail}")

    return record


def _run_parallel(tasks: list[dict], workers: int, record: Callable[[dict], None], log: Callable[[str], None]) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    log(f"running {min(workers, len(tasks))} variants at a time ({threads} CPU thread(s) each)")
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init, initargs=(threads,))
    try:
        futures = {pool.submit(_worker, task): task for task in tasks}
        for future in as_completed(futures):
            try:
                record(future.result())
            except Exception as e:  # a worker process that died (killed, out of memory)
                record({"name": futures[future]["name"], "status": "failed", "reason": f"worker died: {type(e).__name__}: {e}"})
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def open_state(spec: SweepSpec, folder: Path) -> dict:
    """sweep.json, refused if it is another method's (their variants would mix on one leaderboard)."""
    state = _load_state(folder)
    if state.get("method", spec.method) != spec.method:
        raise SweepError(f"{folder / STATE}: holds a {state['method']} sweep, the spec asks for a {spec.method} one; use another --out")
    state.update(spec=str(spec.path.resolve()), base=spec.base, train_subset=spec.train_subset, method=spec.method)
    state.setdefault("variants", {})
    return state


def _load_state(folder: Path) -> dict:
    path = folder / STATE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SweepError(f"{path}: not valid JSON ({e})") from None


def save_state(folder: Path, state: dict) -> None:
    atomic_write_json(folder / STATE, state)


# ---------------------------------------------------------------- the leaderboard


def leaderboard_rows(spec: SweepSpec, folder: Path, state: dict) -> list[dict]:
    """One row per variant: finished ones ranked by final validation accuracy, then the rest."""
    records = state.get("variants", {})
    rows = []
    for v in spec.variants:
        row: dict[str, Any] = {"rank": None, "name": v.name, "overrides": v.overrides, "status": "pending", "reason": None,
                               "val_accuracy": None, "best_val_accuracy": None, "test_accuracy": None, "params": None,
                               "epochs": None, "train_seconds": None, "run": str(folder / v.name)}
        if (folder / v.name / CONFIG).exists():
            try:
                view = load_run(folder / v.name)
            except RunError as e:
                row.update(status="failed", reason=str(e))
            else:
                res = view.results or {}
                row.update(status=view.status, reason=view.reason, val_accuracy=view.final_val_accuracy(),
                           best_val_accuracy=view.best_val_accuracy(), test_accuracy=res.get("test_accuracy"),
                           params=res.get("params", view.config.get("params")), epochs=len(view.metrics),
                           train_seconds=view.train_seconds())
        recorded = records.get(v.name, {})
        if recorded.get("status") == "failed" and row["status"] != "finished":
            row.update(status="failed", reason=recorded.get("reason"))  # e.g. failed before its run dir existed
        rows.append(row)
    ranked = sorted((r for r in rows if r["status"] == "finished"), key=lambda r: -(r["val_accuracy"] if r["val_accuracy"] is not None else -1))
    for n, r in enumerate(ranked, 1):
        r["rank"] = n
    return ranked + [r for r in rows if r["status"] != "finished"]


def write_leaderboard(spec: SweepSpec, folder: Path, state: dict) -> list[dict]:
    """Write leaderboard.json, leaderboard.html and its PNGs into the sweep folder."""
    from cifarlab.experiments import pages  # matplotlib only here: SweepError stays importable without it
    from cifarlab.experiments.figures import curves_figure

    rows = leaderboard_rows(spec, folder, state)
    atomic_write_json(folder / LEADERBOARD_JSON, rows)
    keys = list(dict.fromkeys(k for v in spec.variants for k in v.overrides))
    header = ["rank", "variant", *keys, "val acc (final, ranks)", "best val acc", "test acc", "params", "epochs", "train time", "status"]
    table_rows, classes = [], []
    for r in rows:
        status = r["status"] + (f": {r['reason']}" if r["reason"] and r["status"] != "finished" else "")
        table_rows.append([pages.fmt(r["rank"]), r["name"], *(pages.fmt(r["overrides"].get(k)) for k in keys),
                           pages.fmt(r["val_accuracy"], "pct"), pages.fmt(r["best_val_accuracy"], "pct"),
                           pages.fmt(r["test_accuracy"], "pct"), pages.fmt(r["params"], "int"), pages.fmt(r["epochs"]),
                           pages.fmt(r["train_seconds"], "s"), status])
        classes.append("failed" if r["status"] == "failed" else "")
    finished = [r for r in rows if r["rank"] is not None]
    body = [
        "<h2>Leaderboard</h2><p>Ranked by the final validation accuracy (the model whose test accuracy is shown); "
        "test accuracy is never used to rank.</p>" + pages.table(header, table_rows, classes, num_from=2),
    ]
    if finished:
        body.append(pages.image(pages.save_png(_ranking_figure(finished), folder / FIGURES["ranking"]), "validation accuracy per variant"))
        views = [load_run(r["run"]) for r in finished]
        body.append("<h2>Curves</h2>" + pages.image(pages.save_png(curves_figure(views, [r["name"] for r in finished]), folder / FIGURES["curves"]), "training curves of the finished variants"))
    fixed = ", ".join(f"{k} = {pages.fmt(v)}" for k, v in spec.fixed.items()) or "none"
    subset = f"; first {spec.train_subset:,} training images" if spec.train_subset else ""
    subtitle = f"{spec.path.name}: {spec.describe(len(spec.variants))}; fixed: {fixed}{subset}; written {time.strftime('%Y-%m-%d %H:%M:%S')}"
    pages.write_page(folder / LEADERBOARD, pages.page(f"Sweep {spec.path.stem}", subtitle, body))
    return rows


def _ranking_figure(rows: list[dict]):
    from cifarlab.experiments import pages

    fig = pages.new_figure(8, 0.8 + 0.32 * len(rows))
    ax = fig.subplots()
    y = list(range(len(rows)))[::-1]
    val = [100 * (r["val_accuracy"] or 0) for r in rows]
    test = [100 * (r["test_accuracy"] or 0) for r in rows]
    ax.barh([i + 0.2 for i in y], val, height=0.4, label="validation (ranks)", color="tab:blue")
    ax.barh([i - 0.2 for i in y], test, height=0.4, label="test (shown only)", color="tab:gray")
    ax.set_yticks(y, [pages.plain(r["name"]) for r in rows], fontsize=8)
    ax.set_xlabel("accuracy (%)")
    ax.set_title("Variants ranked by final validation accuracy")
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    ax.grid(axis="x", alpha=0.3)
    return fig


def format_leaderboard(rows: list[dict]) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    lines = [("rank", "variant", "val acc", "test acc", "epochs", "time", "status")]
    for r in rows:
        status = r["status"] + (f" ({r['reason']})" if r["reason"] and r["status"] != "finished" else "")
        lines.append((str(r["rank"] or "-"), r["name"], pct(r["val_accuracy"]), pct(r["test_accuracy"]), str(r["epochs"] or "-"),
                      "-" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}s", status))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def list_variants(spec: SweepSpec, out: Path | str | None) -> str:
    """The variants (or trials, with their values) and their state, then how many are done."""
    if spec.method == "tpe":
        from cifarlab.experiments.search import list_trials  # search.py builds on this module

        return list_trials(spec, out)
    folder = sweep_folder(spec, out)
    states = {v.name: variant_state(spec, v, folder) for v in spec.variants}
    keys = [axis.key for axis in spec.search.axes] if spec.search else []
    rows = [(v.name, states[v.name], variant_name(v.overrides, keys) if keys else "") for v in spec.variants]
    done = sum(state == "finished" for state in states.values())
    return listing(f"{plural(len(spec.variants), spec.unit)} of {spec.base} in {folder}:", rows, f"{done:,} finished, {len(rows) - done:,} to run")


def listing(head: str, rows: list[tuple[str, str, str]], tail: str) -> str:
    """`--list`: a head line, a line per (name, state, values), a tail line."""
    name_width = max((len(name) for name, _, _ in rows), default=0)
    state_width = max((len(state) for _, state, _ in rows), default=0)
    lines = [f"  {name:<{name_width}}  {state:<{state_width}}  {values}".rstrip() for name, state, values in rows]
    return "\n".join([head, *lines, tail])
