"""The commands that use a trained model: evaluate, calibrate, predict, export and serve."""

from __future__ import annotations

import os
from pathlib import Path

from cifarlab.cli.output import progress_log
from cifarlab.errors import CifarlabError


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

    log = progress_log(quiet=False)  # progress: minutes on a CPU
    result, output = evaluate_robustness(run, request, args.data_dir, args.device, args.tta, args.batch_size, args.amp, log)
    print(format_robustness(result))
    print(f"written to {output} (evaluation.json, if any, is left as it was)")


def check_output_folder(output: Path | None) -> None:
    """Before any work: the folder an --output file goes into exists and is writable."""
    if output is None:
        return
    folder = output.parent
    if output.is_dir():
        raise CifarlabError(f"--output {output}: is a folder; name a file")
    if not folder.is_dir():
        raise CifarlabError(f"--output {output}: no such folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CifarlabError(f"--output {output}: cannot write into {folder}")


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
    from cifarlab.serve import limits

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
    p.add_argument("--max-upload-bytes", type=int, default=limits.MAX_UPLOAD_BYTES, help="largest image file accepted (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=limits.MAX_BATCH, help="most requests answered by one forward pass (default: %(default)s)")
    p.add_argument(
        "--max-wait-ms", type=float, default=limits.MAX_WAIT_MS, help="how long a request waits for others to batch with (default: %(default)s)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=limits.MAX_SERVE_PIXELS,
        help="largest image accepted, width x height, before decoding (default: %(default)s)",
    )
    p.add_argument("--decode-workers", type=int, default=limits.DECODE_WORKERS, help="threads decoding uploads (default: %(default)s)")
    p.add_argument(
        "--decode-queue", type=int, default=limits.DECODE_QUEUE, help="uploads waiting for a decode thread; more get 503 (default: %(default)s)"
    )
    p.add_argument("--keep-alive", type=float, default=limits.KEEP_ALIVE_S, help="seconds an idle connection stays open (default: %(default)s)")
    p.add_argument(
        "--header-timeout",
        type=float,
        default=limits.HEADER_TIMEOUT_S,
        help="seconds for a request's line and headers, else 408 (default: %(default)s)",
    )
    p.add_argument(
        "--body-timeout", type=float, default=limits.BODY_TIMEOUT_S, help="seconds for a request's whole body, else 408 (default: %(default)s)"
    )
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
