"""cifarlab: train, evaluate, compare and use CIFAR-10 classifiers in PyTorch.

The public API (documented in docs/api.md; anything not listed in `__all__` is internal):

    run = cifarlab.train("quick", epochs=1, data_dir="data")      # -> Run
    model = cifarlab.load(run.path)                                # -> Model
    print(model.predict(["cat.png"]))                              # -> Predictions

Names are imported on first use, so `import cifarlab` stays light (no torch until one is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "train": "cifarlab.api",
    "load": "cifarlab.api",
    "Run": "cifarlab.api",
    "Model": "cifarlab.api",
    "Predictions": "cifarlab.api",
    "make_config": "cifarlab.api",
    "config_fields": "cifarlab.api",
    "register_model": "cifarlab.api",
    "create_model": "cifarlab.models.registry",
    "list_models": "cifarlab.models.registry",
    "list_presets": "cifarlab.training.presets",
    "TrainConfig": "cifarlab.training.config",
    "load_cifar10": "cifarlab.data.cifar10",
    "Cifar10": "cifarlab.data.formats",
    "CifarLoader": "cifarlab.data.loader",
    "CLASSES": "cifarlab.data.formats",
    "CifarlabError": "cifarlab.errors",
}
# names whose defining function has another name there
_RENAMED = {"create_model": "build_model"}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from cifarlab.api import Model, Predictions, Run, config_fields, load, make_config, register_model, train
    from cifarlab.data.cifar10 import load_cifar10
    from cifarlab.data.formats import CLASSES, Cifar10
    from cifarlab.data.loader import CifarLoader
    from cifarlab.errors import CifarlabError
    from cifarlab.models.registry import build_model as create_model
    from cifarlab.models.registry import list_models
    from cifarlab.training.config import TrainConfig
    from cifarlab.training.presets import list_presets


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cifarlab' has no attribute {name!r}")
    if _EXPORTS[name] == "cifarlab.models.registry":
        importlib.import_module("cifarlab.models")  # registers the built-in models
    value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
