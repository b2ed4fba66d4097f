"""Model registry. Importing this package registers every model defined in it."""

from cifarlab.models.registry import ModelError, build_model, count_parameters, list_models, register
from cifarlab.models import paper, fast  # noqa: F401  (registration side effect)

__all__ = ["ModelError", "build_model", "count_parameters", "list_models", "register"]
