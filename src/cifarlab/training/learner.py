"""What training updates, one epoch of it, and the checks around it: the data splits on the
device, the learner (model, optimizer, schedule, lookahead, generator) and what a checkpoint
holds to resume it exactly, one pass over the training images, the divergence check, and
compiling the trained module.

DDP (docs/scaling.md): every process draws the same order and augmentation for the global batch
and keeps its shard; those places say "DDP:".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.common import distributed
from cifarlab.data import MEAN, STD, Cifar10, split_train_val
from cifarlab.data.augment import normalize
from cifarlab.data.loader import CifarLoader
from cifarlab.errors import CifarlabError
from cifarlab.models import build_model
from cifarlab.models.checkpoint import load_initial_weights
from cifarlab.runtime import autocast, memory_format, use_amp
from cifarlab.text import plural
from cifarlab.training.config import ConfigError, TrainConfig
from cifarlab.training.optim import Lookahead, Schedule, build_optimizer
from cifarlab.training.progress import StepProgress

INIT_IMAGES = 5000  # images shown to a model's data-dependent initialisation


class TrainingDiverged(CifarlabError, RuntimeError):
    pass


@dataclass
class Splits:
    """Every tensor on the training device; images uint8 (N, 3, 32, 32)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    source: str


def make_splits(data: Cifar10, val_size: int, device: torch.device, train_subset: int | None = None) -> Splits:
    """Hold a class-balanced validation split out of the training set and move all to `device`.

    `train_subset`, for tests and quick trials, keeps only the first N training images after the split.
    """
    train_idx, val_idx = split_train_val(data.train_labels, val_size)
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    put = lambda t: t.to(device)  # noqa: E731
    return Splits(
        put(data.train_images[train_idx]),
        put(data.train_labels[train_idx]),
        put(data.train_images[val_idx]),
        put(data.train_labels[val_idx]),
        put(data.test_images),
        put(data.test_labels),
        data.classes,
        data.source,
    )


@dataclass
class Learner:
    """What training updates, and what a checkpoint must hold to resume it exactly."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    lookahead: Lookahead | None
    generator: torch.Generator
    trainee: nn.Module | None = None  # DDP: the DistributedDataParallel wrapper that trains `model`
    init_source: dict | None = None  # the checkpoint a warm start (config.init_from) took its weights from

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "lookahead": self.lookahead.state_dict() if self.lookahead else None,
            "rng": _rng_state(self.generator),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.lookahead:
            self.lookahead.load_state_dict(state["lookahead"])
        _set_rng_state(state["rng"], self.generator)


def build_learner(config: TrainConfig, splits: Splits, dev: torch.device, generator: torch.Generator, warm_start: bool = True) -> Learner:
    """The model (with its data-dependent initialisation, or a warm start's weights), optimizer,
    schedule and lookahead of a config. A resume passes warm_start=False: its checkpoint has the weights."""
    model = build_model(config.model, **config.model_options)
    init_from_data = getattr(model, "init_from_data", None)
    if init_from_data is not None:  # data-dependent initialisation, e.g. a whitening layer
        init_from_data(normalize(splits.train_x[:INIT_IMAGES], MEAN, STD))
    if config.low_res_epochs and not hasattr(model, "set_stem_stride"):
        raise ConfigError(f"low_res_epochs needs a model with a stride-settable stem (fast); {config.model!r} has none")
    # torch's overloads of Module.to omit memory_format, which it takes (and applies to 4-d weights)
    model = model.to(dev, memory_format=memory_format(config.channels_last))  # type: ignore[call-overload]
    init_source = None
    if config.init_from and warm_start:  # weights only; optimizer, schedule and lookahead start fresh
        init_source = load_initial_weights(model, config.init_from)
    optimizer = build_optimizer(model, config)
    steps_per_epoch = math.ceil(len(splits.train_x) / config.batch_size)
    return Learner(
        model,
        optimizer,
        Schedule(optimizer, config, steps_per_epoch),
        Lookahead(model, config.epochs * steps_per_epoch) if config.lookahead else None,
        generator,
        init_source=init_source,
    )


def train_epoch(
    learner: Learner,
    splits: Splits,
    config: TrainConfig,
    desc: str = "",
    progress: bool = True,
    epoch: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict:
    """One pass over the training images in a random order; returns loss, accuracy, steps.
    `epoch` (from 1) chooses the alternating flips and, with progressive resolution, the stem's stride.
    `progress`: a bar on a terminal, else (given `log`) a step line with the time left now and then.

    DDP: every process draws the same order and augmentation (same generator state) for the
    global batch, keeps its contiguous shard, and weights its loss by its share of the batch,
    so the averaged gradient is the global batch's whatever the shard sizes.
    """
    model, generator = learner.model, learner.generator
    if learner.trainee is not None:
        model = learner.trainee  # DDP
    device = splits.train_x.device
    amp = use_amp(config.amp, device)
    world = distributed.world_size()
    loader = CifarLoader(
        splits.train_x,
        splits.train_y,
        config.batch_size,
        crop_pad=config.crop_pad,
        flip=config.flip,
        flip_mode=config.flip_mode,
        seed=config.seed,
        generator=generator,
        min_last_batch=2 * world,
    )  # a shard of one image breaks BatchNorm
    fmt = memory_format(config.channels_last)
    if config.low_res_epochs:  # progressive resolution; set every epoch, so a resume needs no state
        # build_learner checked the model has set_stem_stride; torch types a Module's attributes Tensor | Module
        learner.model.set_stem_stride(2 if epoch <= config.low_res_epochs else None)  # type: ignore[operator]
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    steps = len(loader)
    with StepProgress(steps, desc, progress, log) as bar:
        for step, (x, y) in enumerate(loader.batches(epoch)):
            batch = len(y)
            part = distributed.shard(batch)  # DDP: this process's shard; alone, all of it
            x, y = _at_resolution(x[part], config, epoch, generator).contiguous(memory_format=fmt), y[part]
            loss, logits = _train_step(learner, model, x, y, batch, config, amp)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            if step % 50 == 49 and not distributed.all_finite(loss_sum):
                break  # stop early (every process together); the caller reports it
            bar.update(1)
    totals = distributed.all_reduce_sum(torch.stack([loss_sum.double(), correct.double()]))  # DDP: whole epoch
    seen = loader.images_per_epoch
    total = totals[0].item() / seen
    if not math.isfinite(total):
        raise TrainingDiverged(f"training loss became {total} in {desc or 'this epoch'}")
    return {"train_loss": total, "train_accuracy": int(totals[1].item()) / seen, "steps": steps}


def _at_resolution(x: torch.Tensor, config: TrainConfig, epoch: int, generator: torch.Generator) -> torch.Tensor:
    """The batch as epoch `epoch` trains on it: in an intermediate-resolution epoch, one random
    mid_res_size window of the whole batch (each image is already translated on its own by the
    loader); else as it is."""
    if not config.low_res_epochs < epoch <= config.low_res_epochs + config.mid_res_epochs:
        return x
    size = config.mid_res_size
    top, left = torch.randint(0, x.shape[-1] - size + 1, (2,), generator=generator, device=generator.device).tolist()
    return x[..., top : top + size, left : left + size]


def _train_step(
    learner: Learner, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, config: TrainConfig, amp: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on this process's shard (x, y) of a global batch of `batch` images;
    returns the shard's mean loss and its logits."""
    share = len(y) * distributed.world_size() / batch  # 1 alone or with equal shards
    _stop_finished_bias_gradients(learner.optimizer)
    with autocast(x.device, amp):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
    learner.optimizer.zero_grad(set_to_none=True)
    (loss if share == 1 else loss * share).backward()
    learner.optimizer.step()
    learner.schedule.after_step()
    if learner.lookahead is not None:
        learner.lookahead.step(learner.schedule.step_count)
    return loss, logits


def _stop_finished_bias_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Once the whitening bias's learning rate has reached 0 for good (its schedule stops it after
    `whiten_bias_epochs`), stop computing its gradient, as airbench does (`whiten_bias_grad=False`).
    The weights are the same; the backward pass no longer runs through the first GELU and the
    first block's input gradient: 5-10% of a full-resolution step of `fast` or `airbench94`,
    nothing measurable at stride 2 (benchmarks/whiten_bias_gradient.py, 2-core Xeon, bf16).
    Not under DDP, whose reducer waits for every gradient it registered."""
    if distributed.world_size() > 1:
        return
    for group in optimizer.param_groups:
        if group.get("whiten_bias") and group["lr"] == 0:
            for p in group["params"]:
                p.requires_grad_(False)


# A model that predicts every class equally has a loss of ln(classes) (2.30 for CIFAR-10), and
# training starts near it and goes down. A mean epoch loss ten times that (23: a geometric-mean
# probability of e^-23, about 1e-10, on the true class) is confidently wrong everywhere; plateaus and
# learning-rate spikes move the loss by fractions, not tenfold. A run whose first epoch was already
# above ln(classes) (a badly scaled start) is judged against that epoch instead.
DIVERGENCE_FACTOR = 10


def check_divergence(record: dict, history: list[dict], num_classes: int) -> None:
    """TrainingDiverged (one line) when an epoch's losses say the run diverged: a validation loss that
    is not finite, or a finite training loss over DIVERGENCE_FACTOR x max(ln(classes), the first epoch's)."""
    epoch, loss, val_loss = record["epoch"], record["train_loss"], record.get("val_loss")
    if val_loss is not None and not math.isfinite(val_loss):
        raise TrainingDiverged(f"validation loss became {val_loss} in epoch {epoch} (training loss {loss:.4g}); try a lower lr")
    reference = max([math.log(num_classes)] + [h["train_loss"] for h in history[:1]])
    if loss > DIVERGENCE_FACTOR * reference:
        raise TrainingDiverged(
            f"training loss {loss:.4g} in epoch {epoch} is over {DIVERGENCE_FACTOR}x {reference:.4g} "
            f"(the larger of ln({num_classes} classes) and the first epoch's loss): diverged; try a lower lr"
        )


COMPILE_BACKEND = "inductor"  # torch.compile's default; tests use "eager" (tracing only) to stay fast


def compile_trainee(learner: Learner, splits: Splits, config: TrainConfig) -> float:
    """Train through torch.compile of the trained module (the DDP wrapper, if any), and compile it
    now, so its compile time is not inside the first epoch's; returns those seconds.

    Compiling means one forward and backward pass on each batch shape an epoch has (a full batch
    and the last, shorter one), each specialised (dynamic=False). Their gradients are thrown away
    and the BatchNorm statistics and random number generators they moved are put back, so the
    run is the one it would have been, only compiled.
    """
    device = splits.train_x.device
    trained = learner.trainee if learner.trainee is not None else learner.model
    # torch.compile of a Module is a Module (an OptimizedModule); its signature says only "a callable"
    learner.trainee = cast(nn.Module, torch.compile(trained, backend=COMPILE_BACKEND, dynamic=False))
    buffers = [b.detach().clone() for b in learner.model.buffers()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    start = time.perf_counter()
    learner.trainee.train()
    for size in _batch_sizes(len(splits.train_x), config.batch_size):
        part = distributed.shard(size)  # DDP: the shard each process trains on
        x = normalize(splits.train_x[:size], MEAN, STD)[part].contiguous(memory_format=memory_format(config.channels_last))
        with autocast(device, use_amp(config.amp, device)):
            logits = learner.trainee(x)
        F.cross_entropy(logits.float(), splits.train_y[:size][part]).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    learner.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for buffer, saved in zip(learner.model.buffers(), buffers):
            buffer.copy_(saved)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, device)
    return seconds


def check_batches(images: int, config: TrainConfig, total: int) -> None:
    """ConfigError, before the run directory is written, when the training split cannot make one
    batch that every process gets at least 2 images of (BatchNorm needs 2)."""
    world = distributed.world_size()
    if config.batch_size < 2 * world:
        raise ConfigError(f"batch size {config.batch_size} leaves fewer than 2 images per process for {world} processes")
    if images < 2 * world:
        raise ConfigError(
            f"val_size {config.val_size:,} leaves {plural(images, 'training image')} of {total:,} "
            f"(after --train-subset), fewer than the {2 * world} a batch needs; lower val_size"
        )


def _batch_sizes(n: int, batch_size: int) -> list[int]:
    """The batch sizes of an epoch of n images, as train_epoch draws them."""
    world = distributed.world_size()
    last = n % batch_size
    sizes = [min(batch_size, n)]
    if last and n > batch_size and last >= 2 * world:  # train_epoch drops a last batch too small to shard
        sizes.append(last)
    return sizes


def _rng_state(generator: torch.Generator) -> dict:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
