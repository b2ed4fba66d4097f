"""What stopping the whitening bias's gradient saves per training step, measured A/B in one process.

    python benchmarks/whiten_bias_gradient.py --preset fast --steps 8 \
        --output benchmarks/results/cpu_recipe/whiten-bias-gradient/fast.json
    python benchmarks/whiten_bias_gradient.py --preset fast --set model_options.stem_stride=2 ...

airbench's whitening bias learns for its first epochs only; after that training no longer computes
its gradient, so the backward pass stops before the first GELU and the first block's input
gradient (`training/learner.py: _stop_finished_bias_gradients`). This times one forward, backward
and optimizer step of the preset's network at its batch size (random images: the values do not
change the cost) with the bias's gradient computed and stopped, alternating step by step so that a
machine whose speed drifts (a shared CPU) weighs on both alike, and reports the medians. The
optimizer is SGD at lr 0: its step costs the same either way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from measure import machine_facts

from cifarlab.common.files import atomic_write_json
from cifarlab.models import build_model
from cifarlab.runtime import autocast, keep_freed_memory, memory_format, set_cpu_threads, use_amp
from cifarlab.training.config import apply_overrides, parse_assignment
from cifarlab.training.presets import get_preset


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fast")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a setting")
    p.add_argument("--steps", type=int, default=8, help="timed steps of each kind, after 2 untimed of each")
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()
    if args.steps < 1:
        p.error(f"--steps {args.steps}: at least 1")

    set_cpu_threads()
    keep_freed_memory()  # as train() does on a CPU
    dev = torch.device("cpu")
    try:
        config = apply_overrides(get_preset(args.preset), dict(parse_assignment(text) for text in args.set), "--set")
        model = build_model(config.model, **config.model_options)
    except ValueError as e:  # ConfigError, ModelError: an unknown preset or setting, a bad value or model option
        p.error(str(e))
    fmt, amp = memory_format(config.channels_last), use_amp(config.amp, dev)
    model = model.to(memory_format=fmt)
    if not isinstance(getattr(model, "whiten", None), torch.nn.Conv2d):
        p.error(f"--preset {args.preset}: its model {config.model!r} has no whitening layer (the fast network's); try --preset fast")
    bias = model.whiten.bias
    x = torch.randn(config.batch_size, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (config.batch_size,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def step(bias_learns: bool) -> float:
        bias.requires_grad_(bias_learns)
        start = time.perf_counter()
        with autocast(dev, amp):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for bias_learns in (True, False, True, False):  # warm-up: oneDNN's first-call costs, the allocator
        step(bias_learns)
    learning, stopped = [], []
    for _ in range(args.steps):
        learning.append(step(True))
        stopped.append(step(False))
    result = {
        "preset": args.preset,
        "model_options": config.model_options,
        "batch_size": config.batch_size,
        **machine_facts(dev, config.amp),
        "channels_last": config.channels_last,
        "seconds_per_step_bias_learning": learning,
        "seconds_per_step_bias_stopped": stopped,
        "median_learning": statistics.median(learning),
        "median_stopped": statistics.median(stopped),
        "speedup": statistics.median(learning) / statistics.median(stopped),
        "command": " ".join(sys.argv),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, result)
    print(f"{result['median_learning']:.3f} s per step with the bias learning, {result['median_stopped']:.3f} s stopped: {result['speedup']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
