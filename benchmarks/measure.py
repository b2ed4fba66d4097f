"""What the benchmark scripts share: the facts beside every figure, a stopwatch for device work,
summaries over seeds, and the training and inference throughput of a preset's network.

Imported by the scripts beside it (`python benchmarks/NAME.py` puts this folder on sys.path).
"""

from __future__ import annotations

import statistics
import time

import torch

from cifarlab import runtime
from cifarlab.common.metrics import predict_logits
from cifarlab.data import MEAN, STD
from cifarlab.models import count_parameters
from cifarlab.training.config import TrainConfig
from cifarlab.training.learner import Splits, build_learner, train_epoch


def machine_facts(device: torch.device, amp: str | None = None) -> dict:
    """What results.json records about where it ran (`runtime.machine_facts`) and, given a config's
    `amp`, the dtype autocast resolves to on this device (bfloat16 only where it is native, or forced)."""
    facts = runtime.machine_facts(device)
    if amp is not None:
        facts["autocast_dtype"] = runtime.autocast_dtype(amp, device)
    return facts


class Stopwatch:
    """Seconds a block took on `device`: CUDA events on a GPU (recorded in the stream, so no host
    synchronisation inside the block; the end waits for the GPU to finish), perf_counter on a CPU.

        with Stopwatch(device) as watch:
            ...
        watch.seconds
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: float | None = None

    def __enter__(self) -> Stopwatch:
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record(torch.cuda.current_stream(self.device))
        else:
            self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(self.device))
            end.synchronize()
            self.seconds = self._start.elapsed_time(end) / 1000
        else:
            self.seconds = time.perf_counter() - self._start
        return False


def summary(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def training_throughput(config: TrainConfig, splits: Splits, device: torch.device, repeats: int) -> dict:
    """Images per second of the real training step (`train_epoch`: gather, normalise, augment,
    forward, backward, optimizer) over all of `splits`' training images, `repeats` timed passes
    after one untimed warm-up pass; the median pass counts."""
    # the passes are the run's epochs, so the schedule and lookahead span exactly them; all at the
    # model's own stem stride (a progressive preset's low-resolution epochs: --set model_options.stem_stride=2)
    config = config.replace(epochs=repeats + 1, low_res_epochs=0, mid_res_epochs=0)
    if config.whiten_bias_epochs:  # the bias learns in the warm-up pass only: every timed pass is the
        config = config.replace(whiten_bias_epochs=1)  # step most of a run takes (0, always learning, stays)
    learner = build_learner(config, splits, device, torch.Generator(device).manual_seed(0))
    seconds = []
    for i in range(repeats + 1):
        with Stopwatch(device) as watch:
            record = train_epoch(learner, splits, config, progress=False)
        if i:  # the first pass is the warm-up (cuDNN autotuning, allocator, first-call costs)
            seconds.append(watch.seconds)
    median = statistics.median(seconds)
    images = len(splits.train_x)
    return {
        "batch_size": config.batch_size,
        "params": count_parameters(learner.model),
        "images_per_pass": images,
        "steps_per_pass": record["steps"],
        "pass_seconds": seconds,
        "images_per_second": images / median,
        "seconds_per_step": median / record["steps"],
        "seconds_per_epoch_45k": 45000 / (images / median),
    }


def inference_throughput(model: torch.nn.Module, images: torch.Tensor, batch_size: int, amp: bool, channels_last: bool, repeats: int) -> dict:
    """Images per second of `predict_logits` (normalise, forward in eval mode, no TTA) over uint8
    `images` already on the device, `repeats` timed passes after one untimed pass; the median counts."""
    seconds = []
    for i in range(repeats + 1):
        with Stopwatch(images.device) as watch:
            predict_logits(model, images, MEAN, STD, batch_size=batch_size, amp=amp, channels_last=channels_last)
        if i:
            seconds.append(watch.seconds)
    median = statistics.median(seconds)
    return {"batch_size": batch_size, "images": len(images), "pass_seconds": seconds, "images_per_second": len(images) / median}


# Calls that move data between host and device, or make the host wait for the device. In a training
# step on a GPU each one stalls the queue of kernels; on a CPU the first two still show where they would.
HOST_TRAFFIC = (
    "aten::lift_fresh",  # a tensor from Python data (torch.tensor): a host-to-device copy on a GPU
    "aten::_local_scalar_dense",  # .item(), bool(tensor), float(tensor): the host waits for the device
    "Memcpy HtoD",
    "Memcpy DtoH",
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
)


def profile_training_steps(config: TrainConfig, splits: Splits, device: torch.device, steps: tuple[int, int] = (2, 4), top: int = 12) -> dict:
    """torch.profiler over `train_epoch` on steps[0] and on steps[1] batches (after one unprofiled
    epoch): the difference of the two counts is what every training step does, without what an
    epoch does once (its shuffle, its closing sums). Returns the host traffic per step and the top
    operators by self CPU time of the longer profile."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    learner = build_learner(config.replace(epochs=sum(steps) + 1), splits, device, torch.Generator(device).manual_seed(0))
    counts = []
    for i, n in enumerate((steps[0], *steps)):
        images = n * config.batch_size
        part = Splits(
            splits.train_x[:images],
            splits.train_y[:images],
            *[t[:0] for t in (splits.val_x, splits.val_y, splits.test_x, splits.test_y)],
            splits.classes,
            splits.source,
        )
        with profile(activities=activities) as prof:
            train_epoch(learner, part, config, progress=False)
        if i:  # the first epoch warms up
            counts.append(_count_calls(prof.events()))
    span = steps[1] - steps[0]
    per_step = {name: (counts[1].get(name, 0) - counts[0].get(name, 0)) / span for name in HOST_TRAFFIC}
    return {
        "batch_size": config.batch_size,
        "profiled_steps": list(steps),
        "host_traffic_per_step": per_step,
        "top_ops_by_self_cpu": _top_ops(prof, top),
    }


def _count_calls(events) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        name = next((n for n in HOST_TRAFFIC if event.name.startswith(n)), None)
        if name:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _top_ops(prof, top: int) -> list[dict]:
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    device_time = lambda e: getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))  # noqa: E731
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_ms": e.self_cpu_time_total / 1000,
            "cpu_total_ms": e.cpu_time_total / 1000,
            "self_device_ms": device_time(e) / 1000,
        }
        for e in rows
    ]
