"""A tiny explicit model registry: `@register("name")` on a builder, then `build_model("name", **options)`,
and the checks model constructors run on their options."""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import torch.nn as nn

from cifarlab.common.files import is_number
from cifarlab.errors import CifarlabError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
PLUGINS_ENV = "CIFARLAB_MODELS"  # comma-separated modules that register a user's models
ENTRY_POINT_GROUP = "cifarlab.models"  # or a package's entry points: each names such a module
_plugins_loaded = False


class ModelError(CifarlabError, ValueError):
    """An unknown model name or options the model does not take; the message is one line."""


def register(name: str):
    """Decorator adding a model builder to the registry under `name`."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return wrap


def build_model(name: str, **options) -> nn.Module:
    """Build a registered model; unknown names, unknown options and bad values (a builder's
    ValueError, e.g. a WRN depth that is not 6n + 4) give a one-line error."""
    if not is_registered(name):
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    try:
        return _BUILDERS[name](**options)
    except (TypeError, ValueError) as e:
        raise ModelError(f"bad options for model {name!r}: {e}") from None


def is_registered(name: str) -> bool:
    """Whether `name` builds a model. Users' plugins are imported only for a name not built in, so
    a plugin module may itself import cifarlab (its presets check their built-in models here)."""
    if name not in _BUILDERS:
        load_plugins()
    return name in _BUILDERS


def list_models() -> list[str]:
    """The registered model names, sorted: the built-in ones and any a user registered."""
    load_plugins()
    return sorted(_BUILDERS)


def load_plugins() -> None:
    """Import, once, the modules that register users' models: those named in $CIFARLAB_MODELS and
    the entry points of the group `cifarlab.models`. So a run of a user's network can be reported,
    exported and served from the command line as the built-in ones are."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    modules = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    modules += [e.value.split(":")[0] for e in entry_points(group=ENTRY_POINT_GROUP)]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ModelError(f"{PLUGINS_ENV} or entry point names module {module!r}, which does not import: {e}") from None


def count_parameters(model: nn.Module) -> int:
    """The number of a model's parameters (every one, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- option checks
# Options arrive from TOML, JSON or --set: a width of -5 would otherwise surface as a torch
# RuntimeError deep in a layer (or, at 0, as a model that builds and never learns).


# 16x the widest layer of any preset. Far wider is a typo, and one that would surface only when
# the weights are allocated (a width of 1e12 builds on the meta device the sweep checks on).
MAX_WIDTH = 4096


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(option: str, value: Any, most: int | None = None) -> int:
    """An integer >= 1 (and <= `most`), else a one-line ModelError naming the option."""
    if not _is_int(value) or value < 1 or (most is not None and value > most):
        limit = f" at most {most}" if most is not None else ""
        raise ModelError(f"{option} must be a positive integer{limit}, got {value!r}")
    return value


def layer_widths(option: str, values: Any, count: int) -> tuple[int, ...]:
    """Layer widths: exactly `count` integers from 1 to MAX_WIDTH, as a tuple, else a one-line ModelError."""
    if not isinstance(values, (list, tuple)) or len(values) != count or not all(_is_int(v) and 1 <= v <= MAX_WIDTH for v in values):
        raise ModelError(f"{option} must be a list of {count} integers from 1 to {MAX_WIDTH}, got {values!r}")
    return tuple(values)


def rate(option: str, value: Any) -> float:
    """A dropout probability or a momentum: 0 <= value < 1 (at 1 nothing would pass, or nothing update)."""
    if not is_number(value) or not 0 <= value < 1:
        raise ModelError(f"{option} must be a number from 0 up to (not including) 1, got {value!r}")
    return float(value)


def finite(option: str, value: Any, positive: bool = False) -> float:
    """A finite number (> 0 if `positive`), else a one-line ModelError."""
    if not is_number(value) or not math.isfinite(value) or (positive and value <= 0):
        raise ModelError(f"{option} must be a finite{' positive' if positive else ''} number, got {value!r}")
    return float(value)


def flag(option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ModelError(f"{option} must be true or false, got {value!r}")
    return value
