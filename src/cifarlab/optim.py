"""Optimizer, learning-rate schedule and lookahead for a config."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from cifarlab.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (or Adam, AdamW) with two parameter groups: weights, and 1-d parameters (BatchNorm shifts, biases).

    1-d parameters get `bias_lr_scale` times the learning rate and weight decay divided by the
    same factor, so both groups shrink by the same fraction per step (airbench's scheme: shifts
    of frozen-scale BatchNorm need a much larger step than conv weights).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    scale = config.bias_lr_scale
    groups = [
        {"params": [p for p in trainable if p.ndim > 1], "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "lr": config.lr * scale, "weight_decay": config.weight_decay / scale},
    ]
    for group in groups:
        group["base_lr"] = group["lr"]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def early_stop_reason(history: list[dict], current_lr: float, config: TrainConfig) -> str | None:
    """Why training should stop after the last epoch of `history`, or None to go on.

    A pure function of the epoch records and the learning rate now, so a resumed run stops
    at the same epoch as an uninterrupted one. `lr` in a record is the rate the epoch trained
    with; a cut made after epoch k shows in epoch k+1's record, or in `current_lr` for the last.
    """
    accs = [h.get("val_accuracy") for h in history]
    if config.stop_patience == 0 or not accs or accs[-1] is None:
        return None
    lrs = [h["lr"] for h in history[1:]] + [current_lr]  # rate after each epoch's schedule step
    cut = next((epoch for epoch, lr in enumerate(lrs, 1) if lr < history[0]["lr"]), None)
    if cut is None:
        return None
    best, best_epoch = accs[0], 1
    for epoch, acc in enumerate(accs[1:], 2):
        if acc > best + config.stop_min_delta:
            best, best_epoch = acc, epoch
    since = len(history) - max(cut, best_epoch)
    if since < config.stop_patience:
        return None
    return (
        f"validation accuracy has not improved on {best:.2%} (epoch {best_epoch}) by more than "
        f"{config.stop_min_delta:.1%} for {since} epochs since the learning rate was first cut (epoch {cut})"
    )


class LinearSchedule:
    """Per-step learning-rate factor: linear warm-up from lr_start_factor to 1, then linear decay to lr_end_factor."""

    def __init__(self, config: TrainConfig, total_steps: int):
        self.total = max(1, total_steps)
        self.warmup = int(config.warmup_fraction * self.total)
        self.start, self.end = config.lr_start_factor, config.lr_end_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            frac = step / self.warmup
            return self.start + (1 - self.start) * frac
        frac = (step - self.warmup) / max(1, self.total - self.warmup)
        return 1 + (self.end - 1) * min(1.0, frac)


def _cosine(start: float, end: float, frac: float) -> float:
    """From start (frac 0) to end (frac 1) along half a cosine."""
    return end + (start - end) * (1 + math.cos(math.pi * min(1.0, frac))) / 2


class CosineSchedule(LinearSchedule):
    """LinearSchedule's warm-up, then half a cosine from 1 down to lr_end_factor at the last step."""

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return super().__call__(step)
        return _cosine(1.0, self.end, (step - self.warmup) / max(1, self.total - self.warmup))


class OneCycleSchedule:
    """Smith's one cycle as torch.optim.lr_scheduler.OneCycleLR computes it (cosine annealing, two
    phases): from lr_start_factor up to 1 at step warmup_fraction x total - 1, then down to
    lr_end_factor at the last step (total - 1), both along half a cosine. Momentum stays fixed
    (OneCycleLR's cycle_momentum=False), as the fast CIFAR recipes (airbench, Page's ResNet) keep it."""

    def __init__(self, config: TrainConfig, total_steps: int):
        self.total = max(1, total_steps)
        self.peak = config.warmup_fraction * self.total - 1  # OneCycleLR's end of the first phase
        self.start, self.end = config.lr_start_factor, config.lr_end_factor

    def __call__(self, step: int) -> float:
        if step < self.peak:
            return _cosine(self.start, 1.0, step / self.peak)
        fall = self.total - 1 - self.peak
        return _cosine(1.0, self.end, (step - self.peak) / fall if fall > 0 else 1.0)


class StepSchedule:
    """LinearSchedule's warm-up, then the lr times step_factor once for every milestone epoch passed:
    with milestones [82, 123], x1 in epochs 1-82, x0.1 in epochs 83-123, x0.01 from epoch 124."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int):
        self.warmup = LinearSchedule(config, config.epochs * steps_per_epoch)
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.milestones, self.factor = config.milestones, config.step_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup.warmup:
            return self.warmup(step)
        epochs_done = step // self.steps_per_epoch
        return self.factor ** sum(epochs_done >= m for m in self.milestones)


class Schedule:
    """Every schedule kind behind one interface: `before_step()` each batch, `after_epoch(loss)` each epoch.

    plateau acts on the monitored loss after each epoch; linear, cosine, onecycle and step set
    every group's lr to its base lr times a factor of the step count before each batch.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
        self.optimizer = optimizer
        self.kind = config.schedule
        self.step_count = 0
        total = config.epochs * steps_per_epoch
        per_step = {
            "linear": lambda: LinearSchedule(config, total),
            "cosine": lambda: CosineSchedule(config, total),
            "onecycle": lambda: OneCycleSchedule(config, total),
            "step": lambda: StepSchedule(config, steps_per_epoch),
        }
        self.factor = per_step[self.kind]() if self.kind in per_step else None
        self.plateau = None
        if self.kind == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience
            )

    def before_step(self) -> None:
        if self.factor is not None:
            factor = self.factor(self.step_count)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
        self.step_count += 1

    def after_epoch(self, monitored_loss: float) -> None:
        if self.plateau is not None:
            self.plateau.step(monitored_loss)

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])


class Lookahead:
    """airbench's lookahead: every `every` steps, a slow copy of the weights takes an EMA step
    towards the fast weights and the fast weights jump back onto it.

    The EMA's decay grows as (step / total)^3, so early training is untouched and the end of
    training averages over many steps; `finish()` copies the slow weights in for evaluation.
    """

    def __init__(self, model: nn.Module, total_steps: int, every: int = 5, decay: float = 0.95**5):
        self.model, self.total, self.every, self.decay = model, max(1, total_steps), every, decay
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def step(self, step: int) -> None:
        if step % self.every == 0:
            self._pull(self.decay * (step / self.total) ** 3)

    @torch.no_grad()
    def finish(self) -> None:
        self._pull(1.0)

    def _pull(self, decay: float) -> None:
        for name, value in self.model.state_dict().items():
            if name in self.slow:
                self.slow[name].lerp_(value, 1 - decay)
                value.copy_(self.slow[name])

    def state_dict(self) -> dict:
        return {"slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state["slow"].items():
            self.slow[name].copy_(value)
