"""Optimizer, learning-rate schedule and lookahead for a config."""

from __future__ import annotations

import math
import typing
from collections.abc import Callable

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
    lr, scale = config.step_lr, config.bias_lr_scale
    groups = [
        {"params": [p for p in trainable if p.ndim > 1], "lr": lr, "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "lr": lr * scale, "weight_decay": config.weight_decay / scale},
    ]
    if config.optimizer == "muon":
        return _build_muon(model, config, groups)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov)


def _build_muon(model: nn.Module, config: TrainConfig, groups: list[dict]) -> Muon:
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
    return Muon([g for g in new_groups if g["params"]])


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
                    (self._muon_step if group["muon"] else self._sgd_step)(p, p.grad, group)

    def _momentum(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        buf = state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
        return grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf

    def _muon_step(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        update = self._momentum(p, grad, group)
        p.mul_(math.sqrt(p.size(0)) / p.norm())
        p.add_(newton_schulz(update.reshape(len(update), -1)).view_as(p), alpha=-group["lr"])

    def _sgd_step(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        grad = grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else grad
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
    scores = typing.cast(list[float], accs)  # a run validates every epoch or none, and the last one did
    best, best_epoch = scores[0], 1
    for epoch, acc in enumerate(scores[1:], 2):
        if acc > best + config.stop_min_delta:
            best, best_epoch = acc, epoch
    since = len(history) - max(cut, best_epoch)
    if since < config.stop_patience:
        return None
    return (
        f"validation accuracy has not improved on {best:.2%} (epoch {best_epoch}) by more than "
        f"{config.stop_min_delta:.1%} for {since} epochs since the learning rate was first cut (epoch {cut})"
    )


# ---------------------------------------------------------------- learning-rate schedules
# Each per-step schedule is a pure function of the step: the lr factor torch's LambdaLR multiplies
# every group's initial lr by (one function per group: the whitening bias has its own).


def _linear(start: float, end: float, frac: float) -> float:
    return start + (end - start) * min(1.0, frac)


def _cosine(start: float, end: float, frac: float) -> float:
    """From start (frac 0) to end (frac 1) along half a cosine."""
    return end + (start - end) * (1 + math.cos(math.pi * min(1.0, frac))) / 2


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The lr factor at each step (from 0) of a per-step schedule.

    linear: a rise from lr_start_factor to 1 over warmup_fraction of all steps, then linearly down
    to lr_end_factor at the last step. cosine: the same rise, then half a cosine down. onecycle:
    Smith's one cycle as torch's OneCycleLR computes it (both phases cosine, the peak at step
    warmup_fraction x total - 1; momentum stays fixed, cycle_momentum=False). step: the same rise
    (none by default), then x step_factor once for every milestone epoch passed: with milestones
    [82, 123], x1 in epochs 1-82, x0.1 in epochs 83-123, x0.01 from epoch 124.
    """
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(config.warmup_fraction * total)
    start, end = config.lr_start_factor, config.lr_end_factor

    def rise(step: int) -> float:
        return _linear(start, 1.0, step / warmup)

    def after_warmup(step: int) -> float:
        return (step - warmup) / max(1, total - warmup)

    if config.schedule == "onecycle":
        peak, fall = config.warmup_fraction * total - 1, total - 1 - (config.warmup_fraction * total - 1)
        return lambda step: _cosine(start, 1.0, step / peak) if step < peak else _cosine(1.0, end, (step - peak) / fall if fall > 0 else 1.0)
    if config.schedule == "step":
        per_epoch, milestones, cut = max(1, steps_per_epoch), config.milestones, config.step_factor
        return lambda step: rise(step) if step < warmup else cut ** sum(step // per_epoch >= m for m in milestones)
    if config.schedule == "cosine":
        return lambda step: rise(step) if step < warmup else _cosine(1.0, end, after_warmup(step))
    if config.schedule == "linear":
        return lambda step: rise(step) if step < warmup else _linear(1.0, end, after_warmup(step))
    return lambda step: 1.0  # constant


class Schedule:
    """Every schedule kind behind one interface: `after_step()` after each optimizer step,
    `after_epoch(loss)` after each epoch.

    plateau is torch's ReduceLROnPlateau on the monitored loss; linear, cosine, onecycle and step
    are torch's LambdaLR with lr_factor for every group but airbench's whitening bias, which decays
    linearly to 0 over its own first whiten_bias_epochs and then stops.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
        self.optimizer = optimizer
        self.step_count = 0
        self.per_step: torch.optim.lr_scheduler.LambdaLR | None = None
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        if config.schedule == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience
            )
        elif config.schedule != "constant":
            factor = lr_factor(config, steps_per_epoch)
            whiten_steps = max(1, config.whiten_bias_epochs * steps_per_epoch)
            whiten = lambda step: max(0.0, 1 - step / whiten_steps)  # noqa: E731
            lambdas = [whiten if group.get("whiten_bias") else factor for group in optimizer.param_groups]
            self.per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)

    def after_step(self) -> None:
        if self.per_step is not None:
            self.per_step.step()
        self.step_count += 1

    def after_epoch(self, monitored_loss: float) -> None:
        if self.plateau is not None:
            self.plateau.step(monitored_loss)

    def state_dict(self) -> dict:
        return {
            "step_count": self.step_count,
            "plateau": self.plateau.state_dict() if self.plateau else None,
            "per_step": self.per_step.state_dict() if self.per_step else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's schedule; the optimizer's own state (loaded first) holds every group's lr."""
        self.step_count = state["step_count"]
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
        if self.per_step is not None:
            lrs = [group["lr"] for group in self.optimizer.param_groups]  # a checkpoint from before LambdaLR: its step count
            self.per_step.load_state_dict(state.get("per_step") or {"last_epoch": self.step_count, "_last_lr": lrs})


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
