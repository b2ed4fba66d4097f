"""Size and cost of the registered models: parameters and forward FLOPs per image."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from cifarlab.models.registry import build_model, count_parameters, list_models


def forward_flops(model: nn.Module) -> int:
    """FLOPs of one forward pass on one 3x32x32 image in eval mode, as torch.utils.flop_counter
    counts them: convolutions and matrix products at 2 per multiply-add; BatchNorm, activations,
    pooling and additions are not counted (they are a few percent at most)."""
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, 32, 32, device=device))
    finally:
        model.train(training)
    return counter.get_total_flops()


def build_on_meta(name: str, **options) -> nn.Module:
    """A registered model on the meta device: every tensor a shape without data, so even
    WRN-28-10's 36 M parameters take no memory and its forward pass no arithmetic."""
    with torch.device("meta"):
        return build_model(name, **options)


def describe_model(name: str, **options) -> dict:
    """Parameters and forward GFLOPs per image of a registered model."""
    model = build_on_meta(name, **options)
    return {"model": name, "parameters": count_parameters(model), "gflops": forward_flops(model) / 1e9}


def describe_models(names: list[str] | None = None) -> list[dict]:
    return [describe_model(name) for name in names or list_models()]
