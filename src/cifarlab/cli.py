"""The `cifarlab` command line: parses flags and calls into the library, nothing more."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cifarlab import __version__

def _expected_errors() -> tuple[type[Exception], ...]:
    from cifarlab.config import ConfigError
    from cifarlab.data import DataError
    from cifarlab.models import ModelError
    from cifarlab.rundir import RunError
    from cifarlab.runtime import DeviceError
    from cifarlab.train import TrainingDiverged

    # Errors a user can cause and fix: printed as one line. Anything else is a bug: full traceback.
    return (ConfigError, DataError, RunError, ModelError, DeviceError, TrainingDiverged)


# ---------------------------------------------------------------- train


def add_train(sub) -> None:
    from cifarlab.config import PRESETS

    p = sub.add_parser("train", help="train a model into a run directory", description="Train a preset, overriding any of its settings.")
    p.add_argument("--preset", default="paper", choices=list(PRESETS), help="named recipe (default: %(default)s)")
    p.add_argument("--out", type=Path, help="run directory to create (default: runs/PRESET-TIMESTAMP)")
    p.add_argument("--resume", type=Path, metavar="RUNDIR", help="continue a stopped run to its saved schedule")
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 location (default: $CIFARLAB_DATA or ~/.cache/cifarlab)")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay on conv and linear weights")
    p.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing")
    p.add_argument("--seed", type=int, help="random seed for initialisation, order and augmentation")
    p.add_argument("--val-size", type=int, help="training images held out for validation (0 allowed)")
    p.add_argument("--crop-pad", type=int, help="random-crop padding in pixels (0 = off)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flips")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="channels-last memory format")
    p.add_argument("--tta", type=int, choices=[0, 1, 2], help="test-time augmentation for the final evaluation")
    p.add_argument("--train-subset", type=int, help="train on only the first N training images (quick trials)")
    p.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="under torchrun: BatchNorm statistics over the global batch (GPUs only; default: per process)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from cifarlab import distributed

    # Under torchrun (docs/scaling.md) every process runs this; outside it, these are no-ops.
    device = str(distributed.init_from_env(args.device))
    try:
        _train(args, device)
    finally:
        distributed.cleanup()
    return 0


def _train(args, device: str) -> None:
    from cifarlab import distributed
    from cifarlab.config import get_preset
    from cifarlab.train import train

    if args.resume:
        train(None, args.resume, data_dir=args.data_dir, device=device, resume=True, progress=not args.quiet)
        return
    config = get_preset(args.preset).replace(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        val_size=args.val_size,
        crop_pad=args.crop_pad,
        flip=args.flip,
        amp=args.amp,
        channels_last=args.channels_last,
        tta=args.tta,
        sync_bn=args.sync_bn,
    )
    out = args.out or Path("runs") / f"{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = distributed.broadcast_object(out)  # one run directory, named by rank 0's clock
    train(config, out, data_dir=args.data_dir, device=device, progress=not args.quiet, train_subset=args.train_subset)


# ---------------------------------------------------------------- evaluate


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="test accuracy, per-class accuracy and confusion matrix of a run")
    p.add_argument("run", type=Path, metavar="RUNDIR|CHECKPOINT")
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 location (default: $CIFARLAB_DATA or ~/.cache/cifarlab)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--tta", type=int, choices=[0, 1, 2], default=0, help="test-time augmentation: 0 none, 1 flip, 2 flip + translations")
    p.add_argument("--output", type=Path, help="JSON file to write (default: RUNDIR/evaluation.json)")
    p.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from cifarlab.evaluate import evaluate_checkpoint, format_evaluation

    result, output = evaluate_checkpoint(args.run, args.data_dir, args.device, args.tta, args.output, args.batch_size)
    print(format_evaluation(result))
    print(f"written to {output}")
    return 0


# ---------------------------------------------------------------- info


def add_info(sub) -> None:
    p = sub.add_parser("info", help="device, torch version, data location and the models")
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 location to check")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from cifarlab.info import gather_info

    info = gather_info(args.data_dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"cifarlab {__version__}, torch {info['torch_version']}, device {info['device']} ({info['threads']} CPU threads)")
    print(f"data: {info['data']['location']}: {info['data']['status']}")
    print("models:")
    for name, params in info["models"].items():
        print(f"  {name:<12} {params:>12,} parameters")
    print("presets: " + ", ".join(info["presets"]))
    return 0


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifarlab", description="Train, evaluate and use CIFAR-10 classifiers.")
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_train, add_evaluate, add_info):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _expected_errors() as e:
        print(f"cifarlab {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cifarlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
