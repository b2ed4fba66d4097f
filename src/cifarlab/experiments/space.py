"""The [search] table of a sweep spec: the method, the trial budget and the space the trials draw from.

    [search]
    method = "random"                  # or "tpe": Optuna's TPE sampler (pip install 'cifarlab[search]')
    trials = 20                        # the budget: trials in all, finished or failed
    seed = 0
    study = "paper-tpe"                # the Optuna study's name (default: the spec's name)
    budget_seconds = 200               # optional: a trial's training time limit (below)
    [search.space]                     # one distribution per field, model options dotted
    lr = { log_uniform = [0.001, 0.1] }
    "model_options.fc_dropout" = { uniform = [0.2, 0.6] }
    "model_options.widths" = { choice = [[16, 16, 32, 32, 64, 64, 64], [32, 32, 64, 64, 128, 128, 128]] }
    batch_size = { int = [32, 128] }   # int_log: integers spread evenly on a log scale

Ranges include both bounds. With budget_seconds, a trial whose training took longer is still
trained to its end, but the study scores it as its validation accuracy less one point for each 1%
over the budget (so TPE learns to stay inside it) and the leaderboard ranks it below every trial
inside it. This module only parses and draws; spec.py checks the values against TrainConfig and
the model; every search is an Optuna study (study.py), TPE's sampler drawing as it goes.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cifarlab.errors import CifarlabError

KINDS = ("uniform", "log_uniform", "int", "int_log", "choice")
METHODS = ("random", "tpe")
SEARCH_KEYS = ("method", "trials", "seed", "study", "space", "budget_seconds")
EXAMPLE = "{ uniform = [low, high] }, { log_uniform = [low, high] }, { int = [low, high] }, { int_log = [low, high] } or { choice = [a, b, ...] }"


class SpaceError(CifarlabError, ValueError):
    """A bad [search] table; one line naming the table and the field (spec.py adds the spec's path)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def choice_label(value: Any) -> str:
    """A choice as Optuna stores it: Optuna's categories are scalars, and widths are lists."""
    return json.dumps(value, sort_keys=True, default=str)  # default: TOML dates


@dataclass(frozen=True)
class Axis:
    """One field of the space and the distribution its values come from."""

    key: str  # a TrainConfig field or model_options.NAME
    kind: str  # one of KINDS
    low: float = 0.0  # the bounds of a range, both included
    high: float = 0.0
    choices: tuple = ()

    @property
    def log(self) -> bool:
        return self.kind in ("log_uniform", "int_log")

    @property
    def integer(self) -> bool:
        return self.kind in ("int", "int_log")

    def checked_values(self) -> list:
        """What checking a spec tries: every choice, or a range's bounds and its middle (the
        geometric middle on a log scale). A uniform range's values are floats, so an int field is caught."""
        if self.kind == "choice":
            return list(self.choices)
        middle = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        if self.integer:
            return [self.low, round(middle), self.high]
        return [float(self.low), float(middle), float(self.high)]

    def combined_values(self) -> list:
        """What checking combines with the other axes' values to build the model: every choice, and
        a range's bounds (where sizes clash; every middle too would multiply the builds by 1.5 an axis)."""
        values = self.checked_values()
        return values if self.kind == "choice" else [values[0], values[-1]]

    def draw(self, rng: np.random.Generator) -> Any:
        """A random value; floats rounded to 6 significant digits so names and tables stay readable."""
        if self.kind == "choice":
            return copy.deepcopy(self.choices[int(rng.integers(len(self.choices)))])
        if self.kind == "int":
            return int(rng.integers(int(self.low), int(self.high) + 1))  # int bounds are ints (parse_axis)
        if self.kind == "int_log":  # k with probability proportional to log((k + 1) / k)
            return min(int(math.exp(rng.uniform(math.log(self.low), math.log(self.high + 1)))), int(self.high))
        x = math.exp(rng.uniform(math.log(self.low), math.log(self.high))) if self.log else rng.uniform(self.low, self.high)
        return float(min(max(float(f"{x:.6g}"), self.low), self.high))

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial suggests (what its sampler chooses, stored in the study)."""
        if self.kind == "choice":
            return self.value_of(trial.suggest_categorical(self.key, [choice_label(c) for c in self.choices]))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def value_of(self, param: Any) -> Any:
        """A value as Optuna stored it (the label of a choice) back to the value trained with."""
        if self.kind != "choice":
            return param
        labels = [choice_label(c) for c in self.choices]
        return copy.deepcopy(self.choices[labels.index(param)])

    def as_table(self) -> dict:
        """As the spec wrote it; a study remembers its space in this form."""
        return {self.kind: [choice_label(c) for c in self.choices] if self.kind == "choice" else [self.low, self.high]}


@dataclass(frozen=True)
class Search:
    method: str  # one of METHODS
    trials: int
    seed: int
    study: str  # the Optuna study's name
    axes: tuple[Axis, ...]
    budget_seconds: float = 0.0  # a trial's training-time budget; 0 = none

    def over_budget(self, train_seconds: float | None) -> bool:
        return bool(self.budget_seconds and train_seconds is not None and train_seconds > self.budget_seconds)

    def score(self, val_accuracy: float, train_seconds: float | None) -> float:
        """What the study maximises: validation accuracy, less 0.01 for each 1% of training time
        over the budget."""
        if train_seconds is None or not self.over_budget(train_seconds):
            return val_accuracy
        return val_accuracy - (train_seconds / self.budget_seconds - 1)

    def random_overrides(self, index: int) -> dict[str, Any]:
        """Trial `index` of a random search: fixed by (seed, index) alone, so a rerun after a kill, or
        one with a larger budget, makes the same trials again. (Should a numpy upgrade ever change
        its streams, a rerun is refused, naming the field, rather than mixing trials: runner.py
        compares each run's config.json with its trial.)"""
        rng = np.random.default_rng([self.seed, index])
        return {axis.key: axis.draw(rng) for axis in self.axes}

    def space_table(self) -> dict:
        return {axis.key: axis.as_table() for axis in self.axes}


def trial_name(number: int) -> str:
    return f"trial-{number:03d}"


def _space_entries(table: dict) -> dict[str, Any]:
    """Field -> its distribution table. A [search.space.model_options] table holds model options (the
    one field with dotted names); any other table is a distribution, so a misspelt kind is named."""
    entries = {}
    for key, value in table.items():
        if key == "model_options" and isinstance(value, dict) and not set(value) & set(KINDS):
            entries.update({f"model_options.{name}": entry for name, entry in value.items()})
        else:
            entries[key] = value
    return entries


def _range(key: str, kind: str, bounds: Any) -> Axis:
    where = f"[search.space] {key}: {kind}"
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b) for b in bounds)):
        raise SpaceError(f"{where} must be [low, high], two numbers, got {bounds!r}")
    low, high = bounds
    if kind in ("int", "int_log") and not all(isinstance(b, int) for b in bounds):
        raise SpaceError(f"{where} bounds must be integers, got {bounds!r}")
    if not low < high:
        raise SpaceError(f"{where} needs low < high, got {bounds!r}")
    if kind in ("log_uniform", "int_log") and low <= 0:
        raise SpaceError(f"{where} needs low > 0 (a log scale), got {bounds!r}")
    return Axis(key, kind, low, high)


def _choice(key: str, choices: Any) -> Axis:
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"[search.space] {key}: choice must be a non-empty list of values, got {choices!r}")
    labels = [choice_label(c) for c in choices]
    twice = next((c for c, label in zip(choices, labels) if labels.count(label) > 1), None)
    if twice is not None:
        raise SpaceError(f"[search.space] {key}: choice lists {twice!r} twice")
    return Axis(key, "choice", choices=tuple(choices))


def parse_axis(key: str, entry: Any) -> Axis:
    if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in KINDS:
        fixed = "" if isinstance(entry, dict) else "; a fixed value goes in [fixed]"
        raise SpaceError(f"[search.space] {key}: expected one of {EXAMPLE}, got {entry!r}{fixed}")
    kind, value = next(iter(entry.items()))
    return _choice(key, value) if kind == "choice" else _range(key, kind, value)


def _whole_number(table: dict, key: str, default: int | None, least: int) -> int:
    value = table.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise SpaceError(f"[search] {key} must be an integer of at least {least}, got {value!r}")
    return value


def parse_search(table: Any, default_study: str) -> Search:
    """The [search] table, checked as far as it can be without a config: names, kinds, bounds."""
    if not isinstance(table, dict):
        raise SpaceError(f"[search] must be a table, got {table!r}")
    for key in table:
        if key not in SEARCH_KEYS:
            raise SpaceError(f"[search] unknown key {key!r}; [search] has {', '.join(SEARCH_KEYS)}")
    method = table.get("method")
    if method not in METHODS:
        raise SpaceError(f"[search] method must be {' or '.join(map(repr, METHODS))}, got {method!r}")
    trials = _whole_number(table, "trials", None, 1)
    seed = _whole_number(table, "seed", 0, 0)
    study = table.get("study", default_study)
    if not isinstance(study, str) or not study.strip():
        raise SpaceError(f"[search] study must be a name, got {study!r}")
    space = table.get("space")
    if not isinstance(space, dict) or not space:
        raise SpaceError("[search] needs a [search.space] table of fields and their distributions, e.g. lr = { log_uniform = [0.001, 0.1] }")
    axes = tuple(parse_axis(key, entry) for key, entry in _space_entries(space).items())
    budget = table.get("budget_seconds", 0.0)
    if not _is_number(budget) or budget < 0:
        raise SpaceError(f"[search] budget_seconds must be a number of seconds (0 = no budget), got {budget!r}")
    return Search(method, trials, seed, study, axes, float(budget))
