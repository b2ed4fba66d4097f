"""Several processes training one model (DistributedDataParallel under torchrun).

torchrun starts the same program once per device and sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT. `init_from_env` joins the process group they describe: nccl
when the processes train on CUDA GPUs (one GPU each, GPU number LOCAL_RANK), gloo on CPUs.
Without torchrun (or with one process) no group exists and every function here is a cheap
no-op with single-process meaning (rank 0 of 1), so callers need no branches.

Conventions the training loop relies on:
- every process draws the same global batch and keeps its contiguous `shard` of it;
- rank 0 alone writes files and prints; every process reads;
- anything that decides control flow (stop early, cut the learning rate) is computed from
  all-reduced values, which are bitwise the same on every process, so no process takes a
  different branch and waits forever in a collective the others never enter.
"""

from __future__ import annotations

import gc
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from cifarlab.common.metrics import Evaluation, _counts, _from_counts, evaluate, predict_logits
from cifarlab.runtime import DeviceError, resolve_device

RANK_SEED_STRIDE = 1_000_003  # per-process seeds for dropout: seed + stride * rank


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's number on its own machine (its GPU number)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when the environment describes more than one process (torchrun, or a test doing its job)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> torch.device:
    """Join the process group torchrun describes and return this process's device.

    Outside torchrun, or with one process, it only resolves `device`. Under torchrun a CUDA
    device becomes GPU LOCAL_RANK (nccl); a CPU device uses gloo. Anything else is refused.
    """
    dev = resolve_device(device)
    if not launched_by_torchrun() or is_distributed():
        return dev
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if local >= count:
            raise DeviceError(f"process with LOCAL_RANK {local} has no GPU of its own: {count} visible; start at most {count} per machine")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev)
    elif dev.type == "cpu":
        dist.init_process_group("gloo")
    else:
        raise DeviceError(f"distributed training runs on CUDA GPUs (nccl) or CPUs (gloo), not on {dev.type}")
    return dev


def cleanup(finished: bool = False) -> None:
    """Leave the process group. After a finished run every process first waits for the others;
    after an error, no wait (a peer may be gone). Objects of the training still in reference cycles
    (the DDP wrapper holds the group) are collected first: left to interpreter shutdown, their
    group's threads were torn down there and a rank sometimes aborted at exit ("terminate called
    without an active exception")."""
    if is_distributed():
        gc.collect()
        if finished:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()


# ---------------------------------------------------------------- collectives (no-ops alone)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` as rank `src` has it, on every process (picklable objects only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order, on every process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the processes, in place; returns it. The sum is the same on every process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is finite on every process: one answer for all, so all stop or none does."""
    if not is_distributed():
        return bool(torch.isfinite(tensor).all())
    flag = torch.isfinite(tensor).all().to(torch.float32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


# ---------------------------------------------------------------- work division


def shard(n: int) -> slice:
    """This process's contiguous part of n items: [r*n//W, (r+1)*n//W). No padding, no repeats:
    the parts of all processes together are every item exactly once."""
    r, w = rank(), world_size()
    return slice(r * n // w, (r + 1) * n // w)


@contextmanager
def main_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the first process of every other machine, then on the rest.

    For data downloads: only rank 0 fetches; on a shared filesystem the others then find the
    files, and on a machine with its own disk only its first process fetches again. After
    each round every process learns every failure; all raise the first one (in rank order),
    the same exception with the same message, instead of waiting at a barrier forever.
    """
    if not is_distributed():
        yield
        return
    my_round = 0 if rank() == 0 else (1 if local_rank() == 0 else 2)
    for round_ in range(3):
        mine: Exception | None = None
        if round_ == my_round:
            try:
                yield
            except Exception as e:  # shared below; KeyboardInterrupt just ends the process
                mine = e
        errors = all_gather_object(_portable(mine))
        first = next((i for i, e in enumerate(errors) if e is not None), None)
        if first is not None:
            if first == rank():
                assert mine is not None  # errors[first] is this process's own
                raise mine
            raise errors[first] from None


def from_main(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` run by rank 0 alone; its result, or the same exception, on every process."""
    if not is_distributed():
        return fn(*args, **kwargs)
    result: Any = None
    error: Exception | None = None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            error = e
    result, shared = broadcast_object((result, _portable(error)))
    if shared is not None:
        raise error if error is not None else shared  # rank 0 raises its own exception, the others its copy
    return result


def _portable(error: Exception | None) -> Exception | None:
    """The error itself if it survives pickling (to reach the other processes), else a RuntimeError saying it."""
    if error is None:
        return None
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


# ---------------------------------------------------------------- the model


def wrap_model(model: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """`model` in DistributedDataParallel (alone: `model` itself).

    BatchNorm: by default every process normalises with the statistics of its own shard
    (DDP's standard behaviour, no extra communication); `sync_bn` converts BatchNorm layers
    to SyncBatchNorm, statistics over the whole global batch, which torch runs on GPUs only.
    """
    if not is_distributed():
        return model
    if sync_bn:
        if device.type != "cuda":
            raise DeviceError("--sync-bn needs CUDA GPUs: torch's SyncBatchNorm does not run on CPU; leave it off (per-process statistics)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel wrapper (for evaluation and checkpoints)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def broadcast_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics).

    DDP copies rank 0's buffers to the others at the start of each training forward, so after
    the last step of an epoch they differ by one update; evaluation and the checkpoint must
    see one model.
    """
    if is_distributed():
        for buffer in unwrap(model).buffers():
            dist.broadcast(buffer, src=0)


# ---------------------------------------------------------------- random numbers for dropout


def seed_per_process(seed: int) -> None:
    """Different dropout masks on every process (the same seed everywhere would repeat one
    mask on every shard). Call after building the model, whose initialisation must match."""
    if world_size() > 1:
        torch.manual_seed(seed + RANK_SEED_STRIDE * rank())


def process_rng_states() -> list[dict] | None:
    """Every process's global RNG state (what drives dropout), gathered for a checkpoint; None alone."""
    if world_size() == 1:
        return None
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return all_gather_object(state)


def restore_process_rng_state(states: list[dict] | None, seed: int, epoch: int) -> None:
    """This process's saved RNG state; from a run with another number of processes, a fresh
    per-process seed for `epoch` (the data order and augmentation still resume exactly)."""
    if world_size() == 1:
        return
    if states is not None and len(states) == world_size():
        state = states[rank()]
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
    else:
        torch.manual_seed(seed + RANK_SEED_STRIDE * (rank() + world_size() * epoch))


# ---------------------------------------------------------------- evaluation


def evaluate_sharded(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std, num_classes: int = 10, **kwargs) -> Evaluation:
    """`evaluate` split over the processes of a distributed run; alone, `evaluate` itself.

    Each process scores its contiguous slice of the images (no padding, no image twice, unlike
    a DistributedSampler) and the loss sums and confusion matrices are added up: every image
    counts exactly once whatever the number of processes, and every process gets the same
    result (so decisions taken from it, like cutting the learning rate, agree everywhere).
    """
    if world_size() == 1:
        return evaluate(model, images, labels, mean, std, **kwargs)
    part = shard(len(images))
    logits = predict_logits(model, images[part], mean, std, **kwargs)
    counts = all_reduce_sum(_counts(logits, labels[part], num_classes))
    return _from_counts(counts, num_classes)
