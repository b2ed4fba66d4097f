"""Optimizer, learning-rate schedule and lookahead for a config."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from cifarlab.training.config import TrainConfig


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
    if config.optimizer == "muon":
        return _build_muon(model, config, groups)
    for group in groups:
        group["base_lr"] = group["lr"]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def _build_muon(model: nn.Module, config: TrainConfig, groups: list[dict]) -> "Muon":
    """airbench94_muon's split: Muon for the conv filters, Nesterov SGD for the head (lr) and the
    1-d parameters (lr x bias_lr_scale), the whitening bias in a group of its own so the schedule
    can stop it after `whiten_bias_epochs`."""
    filters = [p for p in groups[0]["params"] if p.ndim == 4]
    head = [p for p in groups[0]["params"] if p.ndim != 4]
    whiten_bias = [p for name, p in model.named_parameters() if name == "whiten.bias" and p.requires_grad]
    biases = [p for p in groups[1]["params"] if not any(p is w for w in whiten_bias)]
    sgd = dict(momentum=config.momentum, nesterov=config.nesterov, muon=False)
    new_groups = [
        dict(params=filters, lr=config.muon_lr, momentum=config.muon_momentum, nesterov=True, weight_decay=0.0, muon=True),
        dict(params=head, lr=groups[0]["lr"], weight_decay=groups[0]["weight_decay"], **sgd),
        dict(params=biases, lr=groups[1]["lr"], weight_decay=groups[1]["weight_decay"], **sgd),
    ]
    if whiten_bias and config.whiten_bias_epochs:
        new_groups.append(dict(params=whiten_bias, lr=groups[1]["lr"], weight_decay=groups[1]["weight_decay"], whiten_bias=True, **sgd))
    elif whiten_bias:
        new_groups[2]["params"] += whiten_bias
    new_groups = [g for g in new_groups if g["params"]]
    for group in new_groups:
        group["base_lr"] = group["lr"]
    return Muon(new_groups)


def newton_schulz(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """An approximate orthogonalisation U S' V^T of a matrix (S' roughly in [0.5, 1.5]) by a quintic
    Newton-Schulz iteration in bfloat16, with Keller Jordan's coefficients (steepest slope at 0)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    x = x / (x.norm() + eps)  # top singular value <= 1
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon (momentum orthogonalised by Newton-Schulz) for groups with `muon=True`, Nesterov SGD
    with weight decay, as torch.optim.SGD computes it, for the others: one optimizer object, so a
    checkpoint and a resume treat it like any other.

    A Muon step renormalises each filter bank to norm sqrt(out_channels) and adds the
    orthogonalised Nesterov momentum (airbench94_muon: momentum 0.6, lr 0.24, no weight decay).
    """

    def __init__(self, groups: list[dict]):
        super().__init__(groups, dict(lr=0.0, momentum=0.0, nesterov=False, weight_decay=0.0, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (self._muon_step if group["muon"] else self._sgd_step)(p, group)

    def _momentum(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        buf = state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
        return grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf

    def _muon_step(self, p: torch.Tensor, group: dict) -> None:
        update = self._momentum(p, p.grad, group)
        p.mul_(math.sqrt(p.size(0)) / p.norm())
        p.add_(newton_schulz(update.reshape(len(update), -1)).view_as(p), alpha=-group["lr"])

    def _sgd_step(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
        p.add_(self._momentum(p, grad, group), alpha=-group["lr"])


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
        # airbench: the whitening bias decays linearly to 0 over its own first epochs, then stops
        self.whiten_bias_steps = max(1, config.whiten_bias_epochs * steps_per_epoch)
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
            whiten_factor = max(0.0, 1 - self.step_count / self.whiten_bias_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * (whiten_factor if group.get("whiten_bias") else factor)
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
