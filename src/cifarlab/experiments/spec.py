"""A sweep spec (TOML): the base preset, the settings every variant shares, and the variants.

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
budget (space.py has its format); a trial is a variant named trial-NNN.

Every variant's settings go through `apply_overrides`, the one function behind `train --set`, so a
sweep and `train` never disagree (`[grid] epochs = [4, 12]` on fast shortens its low-resolution
phase as `--epochs 4` does; `model = "resnet18"` on quick starts from resnet18's own options).
Each variant's model is built once per distinct options, on the meta device, before anything runs;
errors name the spec file and the field. A spec of more than 1,000 variants is refused unless --yes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cifarlab.common.files import read_toml
from cifarlab.errors import CifarlabError
from cifarlab.experiments.space import Search, SpaceError, parse_search, trial_name
from cifarlab.models import ModelError, build_model
from cifarlab.text import first_problem, plural
from cifarlab.training.config import ConfigError, TrainConfig, apply_overrides, dotted_keys
from cifarlab.training.presets import get_preset

SPEC_KEYS = ("base", "train_subset", "fixed", "grid", "variants", "search")
# A larger spec needs --yes: at minutes per variant, a grid one list too long would queue months.
MAX_VARIANTS = 1000
# A variant's name is its run folder's name: file systems take 255 bytes; room is left for a suffix.
MAX_NAME_BYTES = 200


class SweepError(CifarlabError, ValueError):
    """A bad sweep spec, sweep folder or study; the message is one line naming the file and the field."""


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
    variants: tuple[Variant, ...]  # a tpe search's come from its study as it goes: none in the spec itself
    base_config: TrainConfig  # the base preset with [fixed] applied
    search: Search | None = None

    @property
    def method(self) -> str:
        return self.search.method if self.search else "grid"

    @property
    def unit(self) -> str:
        return "trial" if self.search else "variant"

    @property
    def size(self) -> int:
        """How many trials the study holds when the sweep is done."""
        return self.search.trials if self.search else len(self.variants)

    @property
    def study_name(self) -> str:
        return self.search.study if self.search else self.path.stem

    def describe(self, count: int) -> str:
        """'5 variants of the paper preset', '20 trials of a random search over the paper preset'."""
        of = f"of a {self.method} search over" if self.search else "of"
        return f"{plural(count, self.unit)} {of} the {self.base} preset"

    def fingerprint(self) -> dict:
        """What makes the trials of one study comparable; a study is continued only by a spec that
        agrees on all of it (the variants may grow: they are compared one by one, by name)."""
        space = self.search.space_table() if self.search else None
        return normal_json(
            {"method": self.method, "base": self.base, "train_subset": self.train_subset, "config": self.base_config.to_dict(), "space": space}
        )

    def variant_config(self, overrides: dict[str, Any], where: str) -> TrainConfig:
        """The base with a trial's values applied (a tpe trial's, drawn by its study); SweepError if they fail."""
        return _apply(self.base_config, overrides, f"{self.path} {where}", set())


def normal_json(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))  # default: TOML dates


def config_hash(config: TrainConfig) -> str:
    """A short hash of a variant's settings: a study's trial and the spec's variant of one name must agree."""
    return hashlib.sha256(json.dumps(normal_json(config.to_dict()), sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- checking values


def _apply(base: TrainConfig, overrides: dict[str, Any], where: str, built: set[str]) -> TrainConfig:
    """`base` with dotted overrides applied by train's own parser, checked by TrainConfig and the model registry."""
    try:
        config = apply_overrides(base, overrides, source=where)
    except ConfigError as e:
        raise SweepError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    _check_model(config, where, built)
    return config


def _check_model(config: TrainConfig, where: str, built: set[str]) -> None:
    """Build the model once per distinct options (`built` holds those of this spec), so a typo or a
    bad width fails before any training. On the meta device: shapes only, no memory, milliseconds."""
    key = json.dumps([config.model, config.model_options], sort_keys=True, default=repr)
    if key in built:
        return
    try:
        with torch.device("meta"):
            build_model(config.model, **config.model_options)
    except (ModelError, ValueError, TypeError, RuntimeError) as e:  # RuntimeError: torch's, e.g. a width too large
        raise SweepError(f"{where}: model_options: {first_problem(e)}") from None
    built.add(key)


def check_name(name: str, where: str) -> str:
    """A variant's name is a folder's name: refused up front if no file system would take it."""
    bad = next((c for c in name if ord(c) < 32 or c == "\x7f"), None)
    if bad is not None:
        raise SweepError(f"{where}: bad name {name!r}: control character {bad!r}")
    if name in ("", ".", "..") or "/" in name or name.startswith("."):
        raise SweepError(f"{where}: bad name {name!r}: a name is a folder's name (no '/', not starting with '.')")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise SweepError(f"{where}: name of {len(name.encode())} bytes is longer than {MAX_NAME_BYTES} (it names a folder)")
    return name


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
    """Readable, stable: 'lr=0.05,fc_dropout=0.3' (a field's last dotted part unless that is ambiguous);
    too long for a folder's name, it is cut and ends in a hash of the whole."""
    name = ",".join(f"{_short(k, keys)}={_value_text(v)}" for k, v in overrides.items()) or "base"
    name = "".join(c if ord(c) >= 32 and c != "\x7f" else "_" for c in name).lstrip(".") or "base"
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return name.encode()[: MAX_NAME_BYTES - 13].decode(errors="ignore") + "~" + digest


# ---------------------------------------------------------------- reading the spec


def _base_config(path: Path, raw: dict) -> tuple[str, TrainConfig]:
    base_name = raw.get("base")
    if not isinstance(base_name, str):
        raise SweepError(f'{path}: base must be a preset name, e.g. base = "paper"')
    try:
        return base_name, get_preset(base_name)
    except ConfigError as e:
        raise SweepError(f"{path}: base: {e}") from None


def _check_shape(path: Path, raw: dict) -> int | None:
    """The spec's keys and the shape of its tables; returns train_subset."""
    for key in raw:
        if key not in SPEC_KEYS:
            raise SweepError(f"{path}: unknown key {key!r}; a spec has {', '.join(SPEC_KEYS)}")
    subset = raw.get("train_subset")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise SweepError(f"{path}: train_subset must be a positive integer, got {subset!r}")
    for section in ("fixed", "grid"):
        if not isinstance(raw.get(section, {}), dict):
            raise SweepError(f"{path}: {section} must be a table ([{section}])")
    listed = raw.get("variants", [])
    if not isinstance(listed, list) or not all(isinstance(v, dict) for v in listed):
        raise SweepError(f"{path}: variants must be an array of tables ([[variants]])")
    for key, values in dotted_keys(raw.get("grid", {})).items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path} [grid]: {key} must be a non-empty list of values, got {values!r}")
    return subset


def _check_size(path: Path, grid: dict[str, list], listed: list, max_variants: int | None) -> None:
    """Refuse a spec of more than `max_variants` variants, counted before any is made."""
    from_grid = math.prod(len(values) for values in grid.values()) if grid else 0
    total = from_grid + len(listed)
    if max_variants is not None and total > max_variants:
        parts = " x ".join(f"{len(v):,}" for v in grid.values()) + (f" + {len(listed):,} listed" if listed else "")
        raise SweepError(f"{path}: {plural(total, 'variant')} ({parts}) is more than {max_variants:,}; pass --yes to sweep them all")


def _grid_variants(path: Path, base: TrainConfig, grid: dict[str, list], built: set[str]) -> list[Variant]:
    """Every combination of the grid's values, each value first checked alone (so an error names
    the value), then each combination through apply_overrides (so it names the variant)."""
    for key, values in grid.items():
        for value in values:
            _apply(base, {key: value}, f"{path} [grid] {key} = {value!r}", built)
    keys = list(grid)
    variants = []
    for combo in itertools.product(*(grid[key] for key in keys)):
        overrides = dict(zip(keys, combo))
        name = variant_name(overrides, keys)
        variants.append(Variant(name, overrides, _apply(base, overrides, f"{path} [grid] {name}", built)))
    return variants


def _listed_variants(path: Path, base: TrainConfig, listed: list[dict], built: set[str]) -> list[Variant]:
    variants = []
    for n, table in enumerate(listed, 1):
        table = dict(table)
        given = table.pop("name", None)
        overrides = dotted_keys(table)
        if given is not None and not isinstance(given, str):
            raise SweepError(f"{path} [[variants]] #{n}: name must be text, got {given!r}")
        name = check_name(given, f"{path} [[variants]] #{n}") if given is not None else variant_name(overrides, list(overrides))
        variants.append(Variant(name, overrides, _apply(base, overrides, f"{path} [[variants]] #{n} ({name})", built)))
    return variants


def load_spec(path: Path | str, max_variants: int | None = MAX_VARIANTS) -> SweepSpec:
    """Parse and check a sweep spec; SweepError naming the file and field on any problem. More than
    `max_variants` (None: no limit) variants are refused before any is made."""
    path = Path(path)
    raw = read_toml(path, SweepError)
    subset = _check_shape(path, raw)
    base_name, preset = _base_config(path, raw)
    built: set[str] = set()  # model options already built, for this spec only
    fixed = dotted_keys(raw.get("fixed", {}))
    base_config = _apply(preset, fixed, f"{path} [fixed]", built)
    grid = dotted_keys(raw.get("grid", {}))
    listed = raw.get("variants", [])
    if "search" in raw:
        if grid or listed:
            raise SweepError(f"{path}: a [search] makes its own trials; put [grid] and [[variants]] in another spec")
        return _search_spec(path, raw["search"], base_name, subset, fixed, base_config, max_variants, built)
    if not grid and not listed:
        raise SweepError(f"{path}: nothing to sweep; add a [grid] table, [[variants]] tables or a [search] table")
    _check_size(path, grid, listed, max_variants)
    variants = (_grid_variants(path, base_config, grid, built) if grid else []) + _listed_variants(path, base_config, listed, built)
    seen: set[str] = set()
    for v in variants:
        if v.name in seen:
            raise SweepError(f"{path}: two variants are named {v.name!r}; give [[variants]] distinct names")
        seen.add(v.name)
    return SweepSpec(path, base_name, subset, fixed, tuple(variants), base_config)


# ---------------------------------------------------------------- a [search] spec


def _search_spec(
    path: Path, table: Any, base_name: str, subset: int | None, fixed: dict, base_config: TrainConfig, max_variants: int | None, built: set[str]
) -> SweepSpec:
    try:
        search = parse_search(table, default_study=path.stem)
    except SpaceError as e:
        raise SweepError(f"{path} {e}") from None
    if max_variants is not None and search.trials > max_variants:
        raise SweepError(f"{path}: [search] trials = {search.trials:,} is more than {max_variants:,}; pass --yes to run them all")
    _check_space(path, base_config, search, built)
    # a tpe study draws its trials as it goes; random ones are known now
    trials = _random_trials(path, base_config, search, built) if search.method == "random" else []
    return SweepSpec(path, base_name, subset, fixed, tuple(trials), base_config, search)


def _check_space(path: Path, base_config: TrainConfig, search: Search, built: set[str]) -> None:
    """Each axis's bounds and middle (or each choice) alone, then the combinations of choices and
    bounds that reach the model. Trials rank by validation accuracy, so each needs validation images."""
    values = {axis.key: axis.checked_values() for axis in search.axes}
    if "val_size" not in values and base_config.val_size < 1:
        raise SweepError(f"{path} [fixed]: val_size = {base_config.val_size} leaves no validation images to rank the trials by")
    for key, candidates in values.items():
        for value in candidates:
            where = f"{path} [search.space] {key} = {value!r}"
            if _apply(base_config, {key: value}, where, built).val_size < 1:
                raise SweepError(f"{where}: leaves no validation images to rank the trials by")
    combined = {axis.key: axis.combined_values() for axis in search.axes}
    keys = [key for key in combined if key == "model" or key.partition(".")[0] == "model_options"]
    for combo in itertools.product(*(combined[key] for key in keys)):
        overrides = dict(zip(keys, combo))
        _apply(base_config, overrides, f"{path} [search.space] {variant_name(overrides, keys)}", built)


def _random_trials(path: Path, base_config: TrainConfig, search: Search, built: set[str]) -> list[Variant]:
    """The random search's trials, each checked in full (values between those checked included)."""
    keys = [axis.key for axis in search.axes]
    trials = []
    for i in range(search.trials):
        name, overrides = trial_name(i), search.random_overrides(i)
        where = f"{path} [search] {name} ({variant_name(overrides, keys)})"
        trials.append(Variant(name, overrides, _apply(base_config, overrides, where, built)))
    return trials
