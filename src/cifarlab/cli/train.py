"""`cifarlab train`: one flag per setting of TrainConfig, the preset or config file under them."""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

# Help for the flags derived from TrainConfig's fields (every field is a flag; none is listed by hand).
FIELD_HELP = {
    "model": "registered network (cifarlab models lists them); another model than the preset's drops its model options",
    "val_size": "training images held out for validation (0 allowed)",
    "crop_pad": "random-crop padding in pixels (0 = off)",
    "flip": "random horizontal flips",
    "epochs": "number of epochs (an upper bound with the early stop)",
    "optimizer": "sgd, or adam/adamw as the report tried",
    "lr": "peak learning rate",
    "amp": "bfloat16 autocast in training; auto = only where the device has native bf16",
    "tta": "test-time augmentation for the final evaluation",
    "schedule": "learning-rate schedule (linear, cosine, onecycle and step take --warmup-fraction)",
    "milestones": "step schedule: epochs after which the lr is multiplied by --step-factor, e.g. --milestones 82 123",
    "low_res_epochs": (
        "progressive resolution: the first N epochs with the stem at stride 2 "
        "(fast network; 0 = off; --epochs alone keeps a preset's full-resolution finish)"
    ),
    "whiten_bias_epochs": "muon: the whitening bias learns only the first N epochs (0 = always)",
    "stop_patience": "early stop: epochs without a validation gain after the first lr cut (0 = off)",
    "init_from": "warm start from this run's (or checkpoint's) weights, with a fresh optimizer and schedule",
    "compile": "torch.compile the network for training; the compile time is reported apart in results.json",
    "sync_bn": "under torchrun: BatchNorm statistics over the global batch (GPUs only)",
    "mlflow": "log the run to MLflow: to this tracking URI, or without one to MLflow's default store (docs/mlflow.md)",
    "mlflow_register": "also register the logged MLflow model under this name",
    "mlflow_optional": "with --mlflow: an unreachable tracking server is a warning and training goes on without it",
}
_SKIPPED_FIELDS = ("preset", "model_options")  # --preset chooses the base; model options go through --set
_OPTIONAL_VALUES = {"mlflow": "default"}  # a flag whose value may be left out: --mlflow means this


def add_config_flags(p) -> None:
    """One flag per TrainConfig field, typed from its annotation; the dest is the field name."""
    import dataclasses
    import typing

    from cifarlab.training.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SKIPPED_FIELDS:
            continue
        flag, kind = "--" + f.name.replace("_", "-"), hints[f.name]
        help_text = FIELD_HELP.get(f.name, f.name.replace("_", " "))
        if kind is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is typing.Literal:
            p.add_argument(flag, dest=f.name, choices=typing.get_args(kind), help=help_text)
        elif f.name in _OPTIONAL_VALUES:  # --mlflow [URI]
            p.add_argument(flag, dest=f.name, nargs="?", const=_OPTIONAL_VALUES[f.name], metavar="URI", help=help_text)
        elif typing.get_origin(kind) is list:  # --milestones 82 123
            p.add_argument(flag, dest=f.name, nargs="+", type=typing.get_args(kind)[0], metavar="N", help=help_text)
        else:
            p.add_argument(flag, dest=f.name, type=kind, metavar=f.name.upper(), help=help_text)


def config_from_args(args):
    """The preset (or --config file), then the flags, then every --set, checked like config.json."""
    import dataclasses

    from cifarlab.training.config import TrainConfig, apply_overrides, load_config_file, parse_assignment
    from cifarlab.training.presets import get_preset

    config = load_config_file(args.config) if args.config else get_preset(args.preset)
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in _SKIPPED_FIELDS}
    config = apply_overrides(config, {k: v for k, v in flags.items() if v is not None}, source="flags")
    return apply_overrides(config, dict(parse_assignment(a) for a in args.set or []), source="--set")


def add_train(sub) -> None:
    from cifarlab.training.presets import PRESETS

    p = sub.add_parser(
        "train",
        help="train a model into a run directory",
        description="Train a preset, overriding any of its settings: each setting is a flag, "
        "and --set FIELD=VALUE reaches every one, model options included "
        "(--set model_options.widths=[32,64,128]).",
    )
    # no argparse choices: get_preset refuses a typo with the closest name ("did you mean 'quick'?")
    p.add_argument(
        "--preset", default="fast", metavar="{" + ",".join(PRESETS) + "}", help="named recipe (default: %(default)s; the report's own is paper)"
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="start from a run's config.json or a TOML file of settings instead of a preset")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="set any setting, model options as model_options.NAME (repeatable)")
    p.add_argument("--out", type=Path, help="run directory to create (default: runs/PRESET-TIMESTAMP)")
    p.add_argument("--resume", type=Path, metavar="RUNDIR", help="continue a stopped run to its saved schedule")
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 location (default: $CIFARLAB_DATA or ~/.cache/cifarlab)")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--train-subset", type=int, help="train on only the first N training images (quick trials)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--tensorboard", action="store_true", help="also log the metrics for TensorBoard into RUNDIR/tensorboard")
    add_config_flags(p.add_argument_group("settings (each overrides one field of the preset's config)"))
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from cifarlab.common import distributed

    # Under torchrun (docs/scaling.md) every process runs this; outside it, these are no-ops.
    device = str(distributed.init_from_env(args.device))
    try:
        _train(args, device)
    except BaseException:
        distributed.cleanup()
        raise
    distributed.cleanup(finished=True)
    return 0


def _train(args, device: str) -> None:
    from cifarlab.common import distributed
    from cifarlab.training.train import resume, train

    if args.resume:
        with _epoch_callback(args, args.resume) as on_epoch:
            resume(args.resume, data_dir=args.data_dir, device=device, progress=not args.quiet, on_epoch=on_epoch)
        return
    config = config_from_args(args)
    out = args.out or Path("runs") / f"{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = distributed.broadcast_object(out)  # one run directory, named by rank 0's clock
    with _epoch_callback(args, out) as on_epoch:
        train(config, out, train_subset=args.train_subset, data_dir=args.data_dir, device=device, progress=not args.quiet, on_epoch=on_epoch)


@contextlib.contextmanager
def _epoch_callback(args, run: Path):
    """None, or (--tensorboard) a callback mirroring each finished epoch to TensorBoard."""
    if not args.tensorboard:
        yield None
        return
    from cifarlab.training.tblog import TensorBoardMirror

    mirror = TensorBoardMirror(run)  # before training: a missing package fails before anything is written
    try:
        yield mirror.add  # DDP: train() calls it on rank 0 only
    finally:
        mirror.close()
