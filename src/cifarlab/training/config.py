"""Training configuration: one frozen dataclass, named presets, and overrides from flags.

A run's resolved config is saved as `config.json` in its run directory and read back by
`read_run_config` (every command that reads a run), whose `TrainConfig.from_dict` rejects
unknown fields, wrong types (taken from the dataclass's own annotations) and unknown models by name.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cifarlab.common.files import FileError, RunError, parse_json, read_text, read_toml
from cifarlab.common.rundir import CONFIG, RunDir
from cifarlab.common.typecheck import fits_hint, hint_name
from cifarlab.errors import CifarlabError
from cifarlab.models import is_registered, list_models
from cifarlab.text import did_you_mean

Schedule = Literal["plateau", "linear", "constant", "cosine", "step", "onecycle"]
Optimizer = Literal["sgd", "adam", "adamw", "muon"]
FlipMode = Literal["random", "alternating"]
Amp = Literal["auto", "bf16", "off"]


CIFAR10_CLASSES = 10
MAX_EPOCHS = 100_000  # about 20 years of paper epochs on a CPU: more is a typo
MAX_MILESTONES = 100  # 100 cuts of even 0.9 leave 3e-5 of the lr: more is a typo (or [1..15000])
MAX_SEED = 2**63 - 1  # torch seeds are 64-bit; per-process seeds add to it (common/distributed.py)


class ConfigError(CifarlabError, ValueError):
    """An unknown field or a bad value; the message names it."""


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "paper"
    model: str = "paper"
    model_options: dict[str, Any] = field(default_factory=dict)
    # data
    val_size: int = 5000
    crop_pad: int = 0  # random translation by up to this many pixels; 0 = off
    flip: bool = False  # horizontal flips
    # random: each image of each batch with probability 1/2; alternating (airbench): a random half
    # of the images chosen once, then the whole set mirrored every other epoch
    flip_mode: FlipMode = "random"
    # optimisation
    epochs: int = 150  # an upper bound when the early stop is on
    optimizer: Optimizer = "sgd"  # adam and adamw use lr and weight_decay; momentum and nesterov are SGD's
    # muon (airbench94_muon): Muon on conv filters at muon_lr, Nesterov SGD on the rest as for sgd
    muon_lr: float = 0.24
    muon_momentum: float = 0.6
    whiten_bias_epochs: int = 0  # > 0: the whitening bias learns only this many epochs (airbench: 3)
    # progressive resolution (models with a stride-settable stem, FastNet): the first low_res_epochs
    # epochs (and their validation) run the stem at stride 2, so every later layer sees a quarter of
    # the pixels; the rest at the model's own stride, with the same weights. 0 = off.
    low_res_epochs: int = 0
    # an intermediate resolution: the mid_res_epochs epochs after the low-resolution ones train on
    # random mid_res_size x mid_res_size crops of the (already translated) images at the model's own
    # stride, about (mid_res_size / 32)^2 of a full epoch's work; objects keep the scale they have at
    # test time (32x32, as every validation). 0 = off.
    mid_res_epochs: int = 0
    mid_res_size: int = 24
    batch_size: int = 64
    lr: float = 0.01
    # the batch size `lr` is given for (fast, airbench94, quick: their own): the SGD/Adam rate used
    # is lr x batch_size / lr_batch_size, the linear scaling rule (each example's pull on the weights
    # stays the same; airbench's summed loss does this by itself), so `--batch-size N` alone is safe.
    # 0 = lr is used as given. muon_lr is not scaled: Muon's step has a fixed size whatever the batch.
    lr_batch_size: int = 0
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    schedule: Schedule = "plateau"
    plateau_factor: float = 0.1
    plateau_patience: int = 10
    # linear schedule: lr factor rises from lr_start_factor to 1 over warmup_fraction of all
    # steps, then falls linearly to lr_end_factor at the last step. cosine: the same rise, then
    # half a cosine down to lr_end_factor. onecycle: both halves cosine-shaped (torch's OneCycleLR
    # without momentum cycling). step: the same rise (none by default), then the lr times
    # step_factor at each of the milestones (epochs; those past the last epoch never apply).
    warmup_fraction: float = 0.0
    lr_start_factor: float = 0.0
    lr_end_factor: float = 0.0
    milestones: list[int] = field(default_factory=list)
    step_factor: float = 0.1
    bias_lr_scale: float = 1.0  # lr multiplier for 1-d parameters (BatchNorm shifts, biases)
    lookahead: bool = False  # every 5 steps pull the weights towards a slow EMA copy (airbench)
    # early stop ("until the accuracy stabilised", as the report trained): once the learning rate
    # has been cut at least once, stop when validation accuracy has not improved on its best by
    # more than stop_min_delta for stop_patience epochs (counted from the cut at the earliest).
    # 0 = off. Needs a validation split.
    stop_patience: int = 0
    stop_min_delta: float = 0.001
    # warm start: the weights (only) of another run's checkpoint, with this config's fresh
    # optimizer and schedule (the report reloaded trained networks at lr 0.001). "" = none.
    init_from: str = ""
    # numerics and evaluation
    seed: int = 0
    amp: Amp = "auto"  # bfloat16 autocast: auto = where the device computes bf16 natively
    channels_last: bool = True
    compile: bool = False  # torch.compile the trained network; its compile time is reported apart (results.json)
    tta: int = 0  # 0 none, 1 flip, 2 flip + 1-pixel translations
    eval_batch_size: int = 1000
    # distributed runs (torchrun): BatchNorm statistics over the global batch instead of each
    # process's shard; torch's SyncBatchNorm runs on GPUs only (docs/scaling.md)
    sync_bn: bool = False
    # PyTorch's deterministic algorithms (slower; cudnn autotuning off); operations without a
    # deterministic implementation are named in one line at the end, not refused
    deterministic: bool = False
    # MLflow tracking (training/tracking.py, docs/mlflow.md): "" off; "default" MLflow's own store
    # (MLFLOW_TRACKING_URI, else ./mlflow.db); else a tracking URI such as http://127.0.0.1:5000
    mlflow: str = ""
    mlflow_register: str = ""  # also register the logged model under this name ("" = do not)
    mlflow_optional: bool = False  # an unreachable tracking server at start: warn and train without it

    def __post_init__(self):
        choices = lambda kind: "one of " + ", ".join(typing.get_args(kind))  # noqa: E731
        checks = {  # field: (valid?, what is allowed)
            "epochs": (1 <= self.epochs <= MAX_EPOCHS, f"1 to {MAX_EPOCHS:,}"),
            "seed": (0 <= self.seed <= MAX_SEED, "0 to 2**63 - 1"),
            "batch_size": (self.batch_size >= 1, "at least 1"),
            "lr": (0 < self.lr < math.inf, "a positive number"),
            "lr_batch_size": (self.lr_batch_size >= 0, "0 (lr as given) or a batch size"),
            "val_size": (0 <= self.val_size < 50_000, "0 to 49,999"),
            "crop_pad": (0 <= self.crop_pad <= 8, "0 to 8"),
            "tta": (self.tta in (0, 1, 2), "0, 1 or 2"),
            "momentum": (0 <= self.momentum < 1, "0 <= momentum < 1"),
            "weight_decay": (0 <= self.weight_decay < math.inf, "0 or more"),
            "label_smoothing": (0 <= self.label_smoothing < 1, "0 <= label_smoothing < 1"),
            "schedule": (self.schedule in typing.get_args(Schedule), choices(Schedule)),
            "amp": (self.amp in typing.get_args(Amp), choices(Amp)),
            "optimizer": (self.optimizer in typing.get_args(Optimizer), choices(Optimizer)),
            "flip_mode": (self.flip_mode in typing.get_args(FlipMode), choices(FlipMode)),
            "muon_lr": (0 < self.muon_lr < math.inf, "a positive number"),
            "muon_momentum": (0 <= self.muon_momentum < 1, "0 <= muon_momentum < 1"),
            "whiten_bias_epochs": (self.whiten_bias_epochs >= 0, "0 (off) or more"),
            "low_res_epochs": (0 <= self.low_res_epochs < self.epochs, f"0 (off) to epochs - 1 = {self.epochs - 1}"),
            "mid_res_epochs": (
                0 <= self.mid_res_epochs < self.epochs - self.low_res_epochs,
                f"0 (off) to epochs - low_res_epochs - 1 = {self.epochs - self.low_res_epochs - 1}",
            ),
            "mid_res_size": (8 <= self.mid_res_size <= 32, "8 to 32 pixels"),
            "plateau_factor": (0 < self.plateau_factor < 1, "0 < plateau_factor < 1"),
            "plateau_patience": (self.plateau_patience >= 0, "0 or more"),
            "warmup_fraction": (0 <= self.warmup_fraction <= 1, "0 to 1"),
            "lr_start_factor": (0 <= self.lr_start_factor <= 1, "0 to 1"),
            "lr_end_factor": (0 <= self.lr_end_factor <= 1, "0 to 1"),
            "milestones": (
                _increasing(self.milestones) and (self.milestones or self.schedule != "step"),
                f"1 to {MAX_MILESTONES} epochs from 1 to {MAX_EPOCHS:,} in increasing order, at least one for the step schedule",
            ),
            "step_factor": (0 < self.step_factor < 1, "0 < step_factor < 1"),
            "bias_lr_scale": (0 < self.bias_lr_scale < math.inf, "a positive number"),
            "eval_batch_size": (self.eval_batch_size >= 1, "at least 1"),
            "stop_patience": (self.stop_patience >= 0, "0 (off) or more"),
            "stop_min_delta": (0 <= self.stop_min_delta < 1, "0 <= stop_min_delta < 1 (a fraction of accuracy)"),
        }
        for name, (ok, allowed) in checks.items():
            if not ok:
                value = getattr(self, name)
                hint = did_you_mean(value, typing.get_args(_field_types()[name])) if isinstance(value, str) else ""
                raise ConfigError(f"bad value for {name}: {value!r:.80} (allowed: {allowed}){hint}")
        classes = self.model_options.get("num_classes", CIFAR10_CLASSES)
        if classes != CIFAR10_CLASSES:  # else a torch IndexError in the loss, deep in the first step
            raise ConfigError(f"bad value for model_options.num_classes: {classes!r} (training data is CIFAR-10: 10)")

    @property
    def step_lr(self) -> float:
        """The learning rate the optimizer uses: `lr` scaled from lr_batch_size to batch_size."""
        return self.lr * self.batch_size / self.lr_batch_size if self.lr_batch_size else self.lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        hints = _field_types()
        for name, value in values.items():
            if name not in hints:
                raise ConfigError(f"{source}: unknown field {name!r:.80}{did_you_mean(name, hints)}")
            if not fits_hint(value, hints[name]):
                raise ConfigError(f"{source}: field {name!r} must be {hint_name(hints[name])}, got {value!r:.80}")
        model = values.get("model")
        if model is not None and not is_registered(model):
            raise ConfigError(f"{source}: unknown model {model!r:.80}{did_you_mean(model, list_models())}; known models: {', '.join(list_models())}")
        return cls(**values)

    def replace(self, **overrides) -> TrainConfig:
        """A copy with the given fields changed (None values are ignored, as unset flags)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return TrainConfig.from_dict({**self.to_dict(), **given})


def inactive_fields(values: dict[str, Any]) -> set[str]:
    """Settings that a config (as a dict) has but does not use, so a report need not show them."""
    unused = set()
    if values.get("schedule") != "plateau":
        unused |= {"plateau_factor", "plateau_patience"}
    if values.get("schedule") not in ("linear", "cosine", "onecycle", "step"):
        unused |= {"warmup_fraction", "lr_start_factor"}
    if values.get("schedule") not in ("linear", "cosine", "onecycle"):
        unused.add("lr_end_factor")
    if values.get("schedule") != "step":
        unused |= {"milestones", "step_factor"}
    if values.get("optimizer", "sgd") not in ("sgd", "muon"):
        unused |= {"momentum", "nesterov"}
    if values.get("optimizer", "sgd") != "muon":
        unused |= {"muon_lr", "muon_momentum", "whiten_bias_epochs"}
    if not values.get("flip"):
        unused.add("flip_mode")
    if not values.get("mid_res_epochs"):
        unused.add("mid_res_size")
    if not values.get("stop_patience"):
        unused.add("stop_min_delta")
    if not values.get("mlflow"):
        unused |= {"mlflow", "mlflow_register", "mlflow_optional"}
    return unused


def apply_overrides(config: TrainConfig, overrides: dict[str, Any], source: str = "config") -> TrainConfig:
    """`config` with overrides applied, each a field name or `model_options.NAME`, typed and checked
    exactly as config.json is. The one parser behind `train --set` and sweep specs."""
    values = {**config.to_dict(), "model_options": dict(config.model_options)}
    if overrides.get("model", config.model) != config.model:
        values["model_options"] = {}  # the base's options are its own model's: --model NAME starts from NAME's defaults
    epochs = overrides.get("epochs")
    reduced = config.low_res_epochs + config.mid_res_epochs
    if isinstance(epochs, int) and reduced and not {"low_res_epochs", "mid_res_epochs"} & set(overrides):
        # --epochs N keeps the base's full-resolution finish (fast: its last 3 epochs) and puts as
        # many reduced-resolution epochs before it as fit, the intermediate ones last, so
        # `--preset fast --epochs 1` just works
        before = max(0, epochs - (config.epochs - reduced))
        values["mid_res_epochs"] = min(config.mid_res_epochs, before)
        values["low_res_epochs"] = before - values["mid_res_epochs"]
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest and head == "model_options":
            values["model_options"][rest] = value
        elif rest:
            raise ConfigError(f"{source}: unknown field {key!r} (only model_options.NAME takes a dotted name)")
        else:
            values[key] = value
    return TrainConfig.from_dict(values, source=source)


def dotted_keys(table: dict, prefix: str = "") -> dict[str, Any]:
    """Nested tables as the dotted keys apply_overrides takes: {"model_options": {"widths": [..]}}
    -> {"model_options.widths": [..]}; quoted dotted keys pass through."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(dotted_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_config_file(path: Path | str) -> TrainConfig:
    """A run's config.json (its "train" table) or a TOML file of fields ([model_options] a table)."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            values = parse_json(read_text(path), str(path))
            values = values.get("train", values) if isinstance(values, dict) else values
        else:
            values = read_toml(path)
    except FileError as e:
        raise ConfigError(f"--config {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a table of settings")
    return TrainConfig.from_dict(values, source=str(path))


def read_run_config(path: Path | str) -> dict:
    """A run's config.json, checked as a resume checks it: its shape (common/runfiles.py) and its
    train section field by field as a TrainConfig. The one reader of config.json for every
    command (runs, report, compare, export, the model card, a resume), so that one file is
    refused the same way by all of them: a RunError naming the file and the field."""
    run = RunDir(path)
    config = run.config()
    try:
        TrainConfig.from_dict(config["train"], source=str(run.file(CONFIG)))
    except ConfigError as e:
        raise RunError(str(e)) from None
    return config


def parse_assignment(text: str) -> tuple[str, Any]:
    """ "FIELD=VALUE" with VALUE written as in TOML (3, 0.1, true, [32, 64], "text"); a bare word is a string."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected FIELD=VALUE, e.g. --set lr=0.05")
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except RecursionError:
        raise ConfigError(f"--set {key}: the value is nested too deeply") from None
    except tomllib.TOMLDecodeError:
        if raw and all(c.isalnum() or c in "_-./:" for c in raw):
            return key, raw  # a bare word such as linear or runs/paper-1
        raise ConfigError(f'--set {text!r}: {raw!r} is not a value (numbers, true/false, [lists], "strings")') from None


def _increasing(epochs: list[int]) -> bool:
    return len(epochs) <= MAX_MILESTONES and all(1 <= e <= MAX_EPOCHS for e in epochs) and all(a < b for a, b in zip(epochs, epochs[1:]))


@functools.cache
def _field_types() -> dict[str, Any]:
    """Each field's type, from the dataclass's own annotations (resolved, so `float | None` works)."""
    return typing.get_type_hints(TrainConfig)
