"""Model registry. Importing this package registers every model defined in it."""

from cifarlab.models import dla, fast, mobilenetv2, paper, resnet, resnet_cifar, vgg, wrn  # noqa: F401  (registration)
from cifarlab.models.registry import (
    ModelError,
    build_model,
    count_parameters,
    is_registered,
    list_models,
    register,
)

__all__ = ["ModelError", "build_model", "count_parameters", "is_registered", "list_models", "register"]
