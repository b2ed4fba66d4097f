"""Experiment (issue 25, session 10), not a cifarlab feature: train on the hardest examples only.

From epoch SEL_FROM on, each epoch trains on the KEEP fraction of the training images whose loss in
their last training pass was highest (MODE=hard; the loss is recorded per image as it trains, so
choosing costs nothing) or on a random KEEP fraction (MODE=random, the control). The linear
schedule is rebuilt over the real number of steps so it still ends at 0. It replaces cifarlab's
train_epoch for one run (single process only); everything else is `cifarlab train`:

    KEEP=0.5 SEL_FROM=7 MODE=hard python benchmarks/cpu_recipe/hard_examples.py train --preset fast \
        --val-size 5000 --tta 0 --seed 0 --out runs/hard-k50-s7

Results and what they say: benchmarks/cpu_recipe/README.md ("Training on the hardest examples").
"""

import math
import os
import sys

import torch
import torch.nn.functional as F

import cifarlab.training.train as T
from cifarlab.cli import main
from cifarlab.data.augment import alternating_flips, augment, normalize
from cifarlab.data.formats import MEAN, STD
from cifarlab.runtime import autocast, memory_format, use_amp
from cifarlab.training.learner import _at_resolution, _stop_finished_bias_gradients
from cifarlab.training.optim import lr_factor

KEEP, SEL_FROM, MODE = float(os.environ["KEEP"]), int(os.environ["SEL_FROM"]), os.environ.get("MODE", "hard")
STATE = {}


def kept(n, epochs):
    """Images trained on in each epoch."""
    return [n if e < SEL_FROM else int(KEEP * n) for e in range(1, epochs + 1)]


_build = T.build_learner


def build_learner(config, splits, dev, generator, warm_start=True):
    learner = _build(config, splits, dev, generator, warm_start)
    n, b = len(splits.train_x), config.batch_size
    total = sum(math.ceil(k / b) for k in kept(n, config.epochs))
    assert config.schedule in ("linear", "cosine", "onecycle"), "a schedule over steps, not epochs"
    # cifarlab's own schedule over the real step count: lr_factor spans epochs x steps_per_epoch
    factor = lr_factor(config.replace(epochs=1, low_res_epochs=0, mid_res_epochs=0), total)
    whiten_steps = max(1, config.whiten_bias_epochs * math.ceil(n / b))  # as Schedule: its epochs see every image
    lam = [(lambda s: max(0.0, 1 - s / whiten_steps)) if g.get("whiten_bias") else factor for g in learner.optimizer.param_groups]
    learner.schedule.per_step = torch.optim.lr_scheduler.LambdaLR(learner.optimizer, lam)
    STATE["loss"] = torch.full((n,), float("inf"))
    print(f"prototype: KEEP={KEEP} SEL_FROM={SEL_FROM} MODE={MODE}, {total} steps", flush=True)
    return learner


def train_epoch(learner, splits, config, desc="", progress=True, epoch=1, log=None):
    model, g = learner.model, learner.generator
    amp = use_amp(config.amp, splits.train_x.device)
    n = len(splits.train_x)
    if config.low_res_epochs:
        model.set_stem_stride(2 if epoch <= config.low_res_epochs else None)
    model.train()
    k = kept(n, config.epochs)[epoch - 1]
    if k == n:
        pool = torch.arange(n)
    elif MODE == "hard":
        pool = STATE["loss"].topk(k).indices
    else:
        pool = torch.randperm(n, generator=g)[:k]
    order = pool[torch.randperm(len(pool), generator=g)]
    flips = alternating_flips(n, config.seed, epoch)
    loss_sum, correct, steps, seen = 0.0, 0, 0, 0
    fmt = memory_format(config.channels_last)
    for s in range(0, len(order), config.batch_size):
        idx = order[s : s + config.batch_size]
        if len(idx) < 2:
            break
        x = augment(normalize(splits.train_x[idx], MEAN, STD), config.crop_pad, config.flip, g, flips[idx])
        x, y = _at_resolution(x, config, epoch, g).contiguous(memory_format=fmt), splits.train_y[idx]
        _stop_finished_bias_gradients(learner.optimizer)
        with autocast(x.device, amp):
            logits = model(x)
            per = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing, reduction="none")
        loss = per.mean()
        learner.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        learner.optimizer.step()
        learner.schedule.after_step()
        STATE["loss"][idx] = per.detach()
        loss_sum += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        steps, seen = steps + 1, seen + len(idx)
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen, "steps": steps}


# train.py looks both up in its own namespace at each call, so this swaps them for this process only
T.build_learner, T.train_epoch = build_learner, train_epoch
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
