"""Optimizer and learning-rate schedule for a config."""

from __future__ import annotations

import torch
import torch.nn as nn

from cifarlab.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # Weight decay on weights only: decaying BatchNorm scales and biases only hurts.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


class StepSchedule:
    """Learning rate as a function of the global step: linear warm-up, then linear decay to zero."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
        self.optimizer = optimizer
        self.base_lrs = [config.lr for _ in optimizer.param_groups]
        self.total = max(1, config.epochs * steps_per_epoch)
        self.warmup = int(config.warmup_epochs * steps_per_epoch)
        self.step_count = 0

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))

    def step(self) -> None:
        f = self.factor(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f
        self.step_count += 1

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]


class Schedule:
    """One object for every schedule kind: `before_step()` each batch, `after_epoch(val_loss)` each epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
        self.kind = config.schedule
        self.per_step = StepSchedule(optimizer, config, steps_per_epoch) if self.kind == "linear" else None
        self.plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience
            )
            if self.kind == "plateau"
            else None
        )

    def before_step(self) -> None:
        if self.per_step is not None:
            self.per_step.step()

    def after_epoch(self, monitored_loss: float) -> None:
        if self.plateau is not None:
            self.plateau.step(monitored_loss)

    def state_dict(self) -> dict:
        inner = self.per_step or self.plateau
        return {"kind": self.kind, "state": inner.state_dict() if inner is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        inner = self.per_step or self.plateau
        if inner is not None:
            inner.load_state_dict(state["state"])
