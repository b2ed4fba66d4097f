"""Model registry. Importing this package registers every model defined in it."""

from cifarlab.models import fast, paper  # noqa: F401  (registration side effect)
from cifarlab.models.registry import (
    ModelError,
    build_model,
    count_parameters,
    list_models,
    register,
)

__all__ = ["ModelError", "build_model", "count_parameters", "list_models", "register"]
