"""A tiny explicit model registry: `@register("name")` on a builder, then `build_model("name", **options)`."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from cifarlab.errors import CifarlabError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


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
    if name not in _BUILDERS:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    try:
        return _BUILDERS[name](**options)
    except (TypeError, ValueError) as e:
        raise ModelError(f"bad options for model {name!r}: {e}") from None


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
