"""The `cifarlab` command line: parses flags and calls into the library, nothing more."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from cifarlab import __version__
from cifarlab.errors import CifarlabError

# ---------------------------------------------------------------- train


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

    from cifarlab.training.config import TrainConfig, apply_overrides, get_preset, load_config_file, parse_assignment

    config = load_config_file(args.config) if args.config else get_preset(args.preset)
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in _SKIPPED_FIELDS}
    config = apply_overrides(config, {k: v for k, v in flags.items() if v is not None}, source="flags")
    return apply_overrides(config, dict(parse_assignment(a) for a in args.set or []), source="--set")


def add_train(sub) -> None:
    from cifarlab.training.config import PRESETS

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
    finally:
        distributed.cleanup()
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


# ---------------------------------------------------------------- evaluate


def add_inference_amp(p) -> None:
    p.add_argument(
        "--amp",
        choices=["off", "bf16"],
        default="off",
        help="off: float32 (default; the same logits as evaluate, predict, serve and export on any "
        "machine), bf16: bfloat16 autocast (faster where the device computes bf16 natively)",
    )


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="test accuracy, per-class accuracy and confusion matrix of runs")
    p.add_argument(
        "runs",
        type=Path,
        nargs="+",
        metavar="RUNDIR|CHECKPOINT|EXPORT",
        help="one or more runs, checkpoints or safetensors exports (each writes its own evaluation.json into its folder)",
    )
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 location (default: $CIFARLAB_DATA or ~/.cache/cifarlab)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--tta", type=int, choices=[0, 1, 2], help="test-time augmentation: 0 none, 1 flip, 2 flip + translations (default: the run's own)"
    )
    p.add_argument("--output", type=Path, help="JSON file to write, for one run only (default: RUNDIR/evaluation.json)")
    p.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size")
    add_inference_amp(p)
    add_robustness_flags(p.add_argument_group("robustness (each run writes RUNDIR/robustness.json, and leaves its evaluation.json as it was)"))
    p.set_defaults(func=cmd_evaluate)


def add_robustness_flags(g) -> None:
    g.add_argument(
        "--corruptions",
        action="store_true",
        help="accuracy under 15 common corruptions at severities 1-5, generated from the test set with "
        "Hendrycks & Dietterich's CIFAR-10-C parameters (needs cifarlab[robustness])",
    )
    g.add_argument(
        "--corruptions-dir",
        type=Path,
        metavar="DIR",
        help="read the published CIFAR-10-C .npy files from DIR instead of generating them (implies --corruptions)",
    )
    g.add_argument("--cifar101-dir", type=Path, metavar="DIR", help="also accuracy on CIFAR-10.1 (its published .npy files in DIR)")
    g.add_argument("--corruption-names", nargs="+", metavar="NAME", help="only these corruptions (default: all)")
    g.add_argument(
        "--corruption-subset",
        type=int,
        metavar="N",
        help="corrupt only the first N test images (default: all 10,000: 750,000 predictions per tta pass, "
        "about 20 minutes for a stride-2 fast model at --tta 0 on 2 CPU cores; see the README)",
    )
    g.add_argument("--corruption-seed", type=int, default=0, metavar="SEED", help="seed of the generated corruptions (default: %(default)s)")


def cmd_evaluate(args) -> int:
    from cifarlab.inference.evaluate import EvaluateError, evaluate_checkpoint, format_evaluation

    if args.output and len(args.runs) > 1:
        raise EvaluateError(f"--output names one file but {len(args.runs)} runs were given; leave it out to write RUNDIR/evaluation.json each")
    if args.batch_size < 1:
        raise EvaluateError(f"--batch-size {args.batch_size}: must be at least 1")
    check_output_folder(args.output)
    robustness = robustness_request(args)
    if robustness is not None and args.output:
        raise EvaluateError("--output: a robustness evaluation writes RUNDIR/robustness.json only; leave --output out")
    for n, run in enumerate(args.runs):
        if len(args.runs) > 1:
            print(("\n" if n else "") + str(run))
        if robustness is not None:  # robustness.json alone: an evaluation.json made with other settings stays
            _evaluate_robustness(args, run, robustness)
            continue
        result, output = evaluate_checkpoint(run, args.data_dir, args.device, args.tta, args.output, args.batch_size, args.amp, log=print)
        print(format_evaluation(result))
        print(f"written to {output}")
    return 0


def add_calibrate(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit temperature scaling on a run's validation split (for predict/serve --calibrated)",
        description="Fit the temperature T that minimises the negative log-likelihood of logits / T on "
        "the run's validation split (rebuilt from its val_size; never the test set), store it in "
        "RUNDIR/calibration.json, and print the test set's ECE, NLL and Brier score before and after.",
    )
    p.add_argument("run", type=Path, metavar="RUNDIR")
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 location (default: the run's own data, else $CIFARLAB_DATA or ~/.cache/cifarlab)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size")
    add_inference_amp(p)
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> int:
    from cifarlab.inference.calibrate import calibrate_run, format_calibration

    if args.batch_size < 1:
        raise CifarlabError(f"--batch-size {args.batch_size}: must be at least 1")
    record, output = calibrate_run(args.run, args.data_dir, args.device, args.batch_size, args.amp)
    print(format_calibration(record))
    print(f"written to {output}")
    return 0


def add_calibrated_flag(p) -> None:
    p.add_argument(
        "--calibrated", action="store_true", help="probabilities from logits / T, with the temperature `cifarlab calibrate` stored in the run"
    )


def robustness_request(args):
    """The robustness part of `evaluate`, its options and files checked before any work; None if not asked."""
    from cifarlab.inference.robustness import RobustnessError, RobustnessRequest, check_request

    request = RobustnessRequest(
        args.corruptions,
        args.corruptions_dir,
        args.cifar101_dir,
        tuple(args.corruption_names) if args.corruption_names else None,
        args.corruption_subset,
        args.corruption_seed,
    )
    if not request.wanted:
        if args.corruption_names or args.corruption_subset is not None:
            raise RobustnessError("--corruption-names and --corruption-subset go with --corruptions or --corruptions-dir")
        return None
    check_request(request)
    return request


def _evaluate_robustness(args, run: Path, request) -> None:
    from cifarlab.inference.robustness import evaluate_robustness, format_robustness

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731  progress: minutes on a CPU
    result, output = evaluate_robustness(run, request, args.data_dir, args.device, args.tta, args.batch_size, args.amp, log)
    print(format_robustness(result))
    print(f"written to {output} (evaluation.json, if any, is left as it was)")


def check_output_folder(output: Path | None) -> None:
    """Before any work: the folder an --output file goes into exists and is writable."""
    from cifarlab.errors import CifarlabError

    if output is None:
        return
    folder = output.parent
    if output.is_dir():
        raise CifarlabError(f"--output {output}: is a folder; name a file")
    if not folder.is_dir():
        raise CifarlabError(f"--output {output}: no such folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CifarlabError(f"--output {output}: cannot write into {folder}")


# ---------------------------------------------------------------- info


def add_info(sub) -> None:
    p = sub.add_parser("info", help="device, torch version, data location and the models")
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 location to check")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from cifarlab.training.info import gather_info

    info = gather_info(args.data_dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"cifarlab {__version__}, torch {info['torch_version']}, device {info['device']} ({info['threads']} CPU threads)")
    print(f"amp auto: trains in {info['amp_auto']['dtype']} here ({info['amp_auto']['reason']})")
    print(f"data: {info['data']['location']}: {info['data']['status']}")
    print("models:")
    for name, params in info["models"].items():
        print(f"  {name:<12} {params:>12,} parameters")
    print("presets: " + ", ".join(info["presets"]))
    return 0


def add_presets(sub) -> None:
    p = sub.add_parser(
        "presets",
        help="the named recipes and every setting each resolves to",
        description="Show presets with all their settings (those a preset changes from the "
        "defaults are marked *). Any of them can be changed with train flags or --set.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="presets to show (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_presets)


def cmd_presets(args) -> int:
    from cifarlab.training.config import PRESETS, TrainConfig, get_preset, inactive_fields

    presets = {name: get_preset(name) for name in (args.names or PRESETS)}
    if args.json:
        print(json.dumps({name: c.to_dict() for name, c in presets.items()}, indent=2))
        return 0
    defaults = TrainConfig().to_dict()
    for n, (name, config) in enumerate(presets.items()):
        values = config.to_dict()
        unused = inactive_fields(values)
        print(("\n" if n else "") + f"{name}:")
        for key, value in values.items():
            if key not in unused:
                print(f"  {'*' if value != defaults[key] else ' '} {key:<20} {value!r}")
    return 0


def add_models(sub) -> None:
    p = sub.add_parser(
        "models",
        help="the registered models: parameters and forward GFLOPs per image",
        description="List registered models with their parameter count and the GFLOPs of one forward "
        "pass on one 32x32 image, counted by torch.utils.flop_counter (convolutions and matrix products, "
        "2 FLOPs per multiply-add), with each model's default options.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="only these models (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON rows")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from cifarlab.models import ModelError, list_models
    from cifarlab.models.measure import describe_models

    unknown = [n for n in args.names if n not in list_models()]
    if unknown:
        raise ModelError(f"unknown model {unknown[0]!r}; known models: {', '.join(list_models())}")
    rows = describe_models(args.names)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<16} {'parameters':>12} {'GFLOPs':>8}")
    for row in rows:
        print(f"{row['model']:<16} {row['parameters']:>12,} {row['gflops']:>8.3f}")
    return 0


# ---------------------------------------------------------------- predict, export, serve


def add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files with a trained model",
        description="Classify image files (any format Pillow reads) or folders of them, searched "
        "recursively. Images that are not 32x32 RGB are converted (centre square, bicubic resize) "
        "and flagged. A folder laid out as FOLDER/CLASS_NAME/... also gets accuracy. Exit status "
        "1 if any file could not be read (each is reported on its own line; the rest still run).",
    )
    p.add_argument("run", type=Path, metavar="RUNDIR|CHECKPOINT|EXPORT", help="a run, a checkpoint or a safetensors export folder")
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default: %(default)s)")
    p.add_argument("--output", type=Path, metavar="FILE.csv|FILE.json", help="also write one row (CSV) or object (JSON) per file")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_inference_amp(p)
    add_calibrated_flag(p)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from cifarlab.inference.model import Predictor
    from cifarlab.inference.predict import (
        PredictError,
        check_output_name,
        format_report,
        predict_paths,
        write_report,
    )

    check_output_name(args.output)
    check_output_folder(args.output)
    if args.batch_size < 1:
        raise PredictError("--batch-size must be at least 1")
    predictor = Predictor(args.run, device=args.device, batch_size=args.batch_size, amp=args.amp, calibrated=args.calibrated)
    predictor.check_top_k(args.top_k)  # 1 to the model's classes, as serve's ?top_k=
    report = predict_paths(predictor, args.paths, top_k=args.top_k, progress=not args.quiet)
    print(format_report(report))
    if args.output:
        write_report(report, args.output)
        print(f"written to {args.output}")
    return 1 if report.errors else 0


def add_export(sub) -> None:
    from cifarlab.inference.export import CHECK_IMAGES, FORMATS, TOLERANCE

    p = sub.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or a safetensors folder, checked against PyTorch",
        description="Export a run's model (float32, dynamic batch size) and write its preprocessing "
        "to MODEL.json beside it. The export is loaded back and compared with PyTorch on real test "
        "images; if the logits differ by more than --tolerance, nothing is written. --format "
        "safetensors writes a folder (model.safetensors, config.json, a README.md model card) that "
        "predict, evaluate and serve take as they take a run; its logits must be identical.",
    )
    p.add_argument("run", type=Path, metavar="RUNDIR|CHECKPOINT")
    p.add_argument("--format", choices=list(FORMATS), default="onnx", help="(default: %(default)s)")
    p.add_argument(
        "--output",
        type=Path,
        help="model file, or folder for safetensors (default: RUNDIR/model.onnx, RUNDIR/model.torchscript.pt or RUNDIR/safetensors/)",
    )
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 for the check (default: the run's own data, else $CIFARLAB_DATA or ~/.cache/cifarlab)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="max absolute logit difference, ONNX and TorchScript (default: %(default)g)")
    p.add_argument("--check-images", type=int, default=CHECK_IMAGES, help="test images to check on (default: %(default)s)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from cifarlab.common.rundir import EXPORT_CARD
    from cifarlab.inference.export import FOLDER_FORMATS, export_model, sidecar

    if args.format not in FOLDER_FORMATS:
        check_output_folder(args.output)
    path, info = export_model(args.run, args.format, args.output, args.data_dir, args.tolerance, args.check_images)
    check = info["check"]
    if args.format in FOLDER_FORMATS:
        print(f"exported {info['model']} to {path}/ ({', '.join(sorted(os.listdir(path)))})")
        print(f"checked on {check['count']} images ({check['images']}): loaded back, logits identical to the run's")
        print(f"model card: {path / EXPORT_CARD}; predict, evaluate and serve take {path} as they take a run")
        return 0
    print(f"exported {info['model']} to {path} ({args.format}, float32 input N x 3 x 32 x 32)")
    print(
        f"checked on {check['count']} images ({check['images']}), batch sizes {check['batch_sizes']}: "
        f"max |logit difference| {check['max_abs_diff']:.2e} <= {check['tolerance']:g}, "
        f"top-1 agreement {check['top1_agreement']:.1%}"
    )
    print(f"preprocessing written to {sidecar(path)}")
    return 0


def add_serve(sub) -> None:
    from cifarlab.serve import (
        BODY_TIMEOUT_S,
        DECODE_QUEUE,
        DECODE_WORKERS,
        HEADER_TIMEOUT_S,
        KEEP_ALIVE_S,
        MAX_BATCH,
        MAX_SERVE_PIXELS,
        MAX_UPLOAD_BYTES,
        MAX_WAIT_MS,
    )

    p = sub.add_parser(
        "serve",
        help="HTTP service: POST /predict, GET /health, upload page at /",
        description="Serve a model over HTTP: POST /predict with a multipart field 'file' "
        "(curl -F file=@img.png URL/predict) returns JSON top-k; GET / is an upload page.",
    )
    p.add_argument("run", type=Path, metavar="RUNDIR|CHECKPOINT|EXPORT", help="a run, a checkpoint or a safetensors export folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    p.add_argument("--top-k", type=int, default=5, help="classes per answer unless ?top_k= says (default: %(default)s)")
    p.add_argument("--max-upload-bytes", type=int, default=MAX_UPLOAD_BYTES, help="largest image file accepted (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH, help="most requests answered by one forward pass (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=MAX_WAIT_MS, help="how long a request waits for others to batch with (default: %(default)s)")
    p.add_argument(
        "--max-pixels", type=int, default=MAX_SERVE_PIXELS, help="largest image accepted, width x height, before decoding (default: %(default)s)"
    )
    p.add_argument("--decode-workers", type=int, default=DECODE_WORKERS, help="threads decoding uploads (default: %(default)s)")
    p.add_argument("--decode-queue", type=int, default=DECODE_QUEUE, help="uploads waiting for a decode thread; more get 503 (default: %(default)s)")
    p.add_argument("--keep-alive", type=float, default=KEEP_ALIVE_S, help="seconds an idle connection stays open (default: %(default)s)")
    p.add_argument(
        "--header-timeout", type=float, default=HEADER_TIMEOUT_S, help="seconds for a request's line and headers, else 408 (default: %(default)s)"
    )
    p.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT_S, help="seconds for a request's whole body, else 408 (default: %(default)s)")
    add_inference_amp(p)
    add_calibrated_flag(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from cifarlab.serve import serve

    serve(
        args.run,
        host=args.host,
        port=args.port,
        device=args.device,
        top_k=args.top_k,
        max_upload_bytes=args.max_upload_bytes,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        amp=args.amp,
        max_pixels=args.max_pixels,
        decode_workers=args.decode_workers,
        decode_queue=args.decode_queue,
        keep_alive_s=args.keep_alive,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        calibrated=args.calibrated,
    )
    return 0


# ---------------------------------------------------------------- report, runs, compare, sweep


def add_report(sub) -> None:
    p = sub.add_parser("report", help="write an HTML report (and PNG figures) into a run directory")
    p.add_argument("run", type=Path, metavar="RUNDIR")
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 location, for the error analysis (default: $CIFARLAB_DATA or ~/.cache/cifarlab)")
    p.add_argument("--device", default="auto", help="device for the test-set predictions: auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from cifarlab.experiments.report import build_report

    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    print(build_report(args.run, args.data_dir, args.device, log=log, progress=not args.quiet))
    return 0


def add_runs(sub) -> None:
    from cifarlab.experiments.runs import COLUMNS

    p = sub.add_parser("runs", help="list the runs under a folder as a table")
    p.add_argument("folder", type=Path, nargs="?", default=Path("runs"), help="folder to search (default: %(default)s)")
    p.add_argument("--sort", default="name", choices=COLUMNS, help="column to sort by (default: %(default)s)")
    p.add_argument("--reverse", action="store_true", help="sort descending")
    p.add_argument("--json", action="store_true", help="print JSON rows for scripts")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args) -> int:
    from cifarlab.experiments.runs import format_runs, list_runs, runs_json

    rows = list_runs(args.folder, args.sort, args.reverse, warn=lambda s: print(f"cifarlab runs: {s}", file=sys.stderr))
    print(runs_json(rows) if args.json else format_runs(rows))
    return 0


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="one HTML page overlaying runs' curves and tabulating their configs")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUNDIR")
    p.add_argument("--out", type=Path, default=Path("comparison"), help="folder for compare.html and its PNGs (default: %(default)s)")
    p.add_argument(
        "--data-dir",
        type=Path,
        help="CIFAR-10 location, for the test accuracy of runs not finished (default: each run's own data, else $CIFARLAB_DATA or ~/.cache/cifarlab)",
    )
    p.add_argument("--device", default="auto", help="device for those test-set predictions: auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from cifarlab.experiments.compare import compare_runs

    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    print(compare_runs(args.runs, args.out, args.data_dir, args.device, log))
    return 0


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="train the variants of a sweep spec (TOML) as trials of one Optuna study, and rank them")
    p.add_argument("spec", type=Path, metavar="SPEC.toml")
    p.add_argument("--out", type=Path, help="sweep folder (default: next to the spec, named after it)")
    p.add_argument(
        "--storage",
        metavar="URL",
        help="the study's database: default a SQLite file in the sweep folder; "
        "any URL Optuna accepts, e.g. postgresql+psycopg://user:password@host/db, shared by workers on several machines",
    )
    p.add_argument("--data-dir", type=Path, help="CIFAR-10 location (default: $CIFARLAB_DATA or ~/.cache/cifarlab)")
    p.add_argument("--device", default="auto", help="auto (worker i on cuda:(i %% GPUs) when there are GPUs), cpu, cuda:N")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="run N workers on this machine, in processes of their own")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        metavar="S",
        help="seconds between a worker's heartbeats; a trial silent for 3 of them is retried (default: %(default)s)",
    )
    p.add_argument("--retry-failed", action="store_true", help="queue the variants that failed again")
    p.add_argument("--list", action="store_true", help="only list the variants (a search's trials, with their values) and their state")
    p.add_argument("--leaderboard", action="store_true", help="only write the leaderboard pages again, from the study's storage")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--yes", action="store_true", help="accept a spec of more than 1,000 variants or trials")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    from cifarlab.experiments.sweep import MAX_VARIANTS, format_leaderboard, list_variants, load_spec, rebuild_leaderboard, run_sweep

    spec = load_spec(args.spec, max_variants=None if args.yes else MAX_VARIANTS)
    if args.list:
        print(list_variants(spec, args.out, args.storage))
        return 0
    if args.leaderboard:
        board = rebuild_leaderboard(spec, args.out, args.storage)
    else:
        board = run_sweep(
            spec,
            args.out,
            args.data_dir,
            args.device,
            args.workers,
            progress=not args.quiet,
            storage=args.storage,
            heartbeat=args.heartbeat,
            retry_failed=args.retry_failed,
        )
    print(format_leaderboard(board))
    return 0


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifarlab", description="Train, evaluate and use CIFAR-10 classifiers.")
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = (
        add_train,
        add_evaluate,
        add_calibrate,
        add_info,
        add_presets,
        add_models,
        add_report,
        add_runs,
        add_compare,
        add_sweep,
        add_predict,
        add_export,
        add_serve,
    )
    for add in commands:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CifarlabError as e:  # a user mistake: one line; anything else is a bug: traceback
        # one write per line: several torchrun processes share stderr and must not interleave
        sys.stderr.write(f"cifarlab {args.command}: error: {e}\n")
        sys.stderr.flush()
        return 1
    except KeyboardInterrupt as e:
        command = getattr(e, "resume_command", None)  # a training says how to go on
        print(f"cifarlab {args.command}: interrupted" + (f"; resume it with: {command}" if command else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
