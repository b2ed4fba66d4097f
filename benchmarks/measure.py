"""What the benchmark scripts share: a stopwatch for device work, summaries over seeds, and the
training and inference throughput of a preset's network.

Imported by the scripts beside it (`python benchmarks/NAME.py` puts this folder on sys.path).
"""

from __future__ import annotations

import statistics
import time

import torch

from cifarlab.config import TrainConfig
from cifarlab.data import MEAN, STD
from cifarlab.evaluate import predict_logits
from cifarlab.models import count_parameters
from cifarlab.train import Splits, build_learner, train_epoch


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

    def __enter__(self) -> "Stopwatch":
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
    # the passes are the run's epochs, so the schedule and lookahead span exactly them
    learner = build_learner(config.replace(epochs=repeats + 1), splits, device, torch.Generator(device).manual_seed(0))
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
