"""Training throughput of a preset on this device: images/s and seconds per step.

    python benchmarks/throughput.py --preset paper --device cpu --data-dir ../shared/cifar10 \\
        --output benchmarks/results/throughput-paper-cpu.json
    python benchmarks/throughput.py --preset standard --model vgg16 --images 512 --repeats 1 ...

`--model NAME` trains another registered network with the preset's recipe and `--set FIELD=VALUE`
changes any setting (the `train --set` syntax). The JSON records the processor, threads and the
resolved autocast dtype beside the figures.

Runs the real training step (`cifarlab.train.train_epoch`: gather, normalise, augment,
forward, backward, SGD step) over `--images` real training images, `--repeats` times after
one warm-up pass, and reports the median (`measure.training_throughput`, which the GPU suite
uses too). No accuracy is measured here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from measure import machine_facts, training_throughput

from cifarlab.common.files import atomic_write_json
from cifarlab.data import load_cifar10
from cifarlab.models import build_model
from cifarlab.runtime import keep_freed_memory, resolve_device, set_cpu_threads, tune_for_training, use_amp
from cifarlab.training.config import apply_overrides, parse_assignment
from cifarlab.training.learner import make_splits
from cifarlab.training.presets import get_preset


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper")
    p.add_argument("--model", help="another registered network, with the preset's recipe")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a setting")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--images", type=int, default=4096, help="training images per timed pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, help="override the preset's batch size")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], help="override the preset's amp setting")
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()
    for flag, value in (("--images", args.images), ("--repeats", args.repeats)):
        if value < 1:
            p.error(f"{flag} {value}: at least 1")
    try:  # an unknown preset, setting or network, a bad value or model option: one line, not a traceback
        overrides = dict(parse_assignment(text) for text in args.set)
        if args.model:
            overrides["model"] = args.model
        config = apply_overrides(get_preset(args.preset), overrides, "--set")
        config = config.replace(batch_size=args.batch_size, amp=args.amp, val_size=0)
        build_model(config.model, **config.model_options)
    except ValueError as e:  # ConfigError, ModelError
        p.error(str(e))

    dev = resolve_device(args.device)
    if dev.type == "cpu":
        set_cpu_threads()
        keep_freed_memory()  # as train() does; CIFARLAB_MALLOC=system to measure without
    tune_for_training(dev)
    splits = make_splits(load_cifar10(args.data_dir), 0, dev, train_subset=args.images)
    measured = training_throughput(config, splits, dev, args.repeats)
    result = {
        "preset": args.preset,
        "model": config.model,
        "model_options": config.model_options,
        **machine_facts(dev, config.amp),
        "amp": use_amp(config.amp, dev),
        "channels_last": config.channels_last,
        **measured,
        "command": " ".join(sys.argv),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, result)
    print(
        f"{result['images_per_second']:.1f} images/s, {result['seconds_per_step'] * 1000:.1f} ms/step "
        f"(batch {config.batch_size}), {result['seconds_per_epoch_45k']:.0f} s per 45k-image epoch"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
