"""Train a preset with several seeds; write each run's accuracy and seconds, and their summary.

    python benchmarks/time_to_accuracy.py --preset quick --seeds 3 --device cpu \\
        --data-dir ../shared/cifar10 --output benchmarks/results/quick-cpu.json

Per run: test accuracy (with the preset's TTA), validation accuracy, training seconds (the
epoch loop, per-epoch validation included), evaluation seconds (final test evaluation) and
set-up seconds (data to device, model build and data-dependent init) listed separately, and
the validation accuracy after every epoch with its elapsed seconds, for time-to-accuracy
curves. `--set FIELD=VALUE` overrides any config field (JSON values; `model_options.X=...`
sets one model option), which is how the ablations run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from measure import summary

from cifarlab.common.rundir import atomic_write_json
from cifarlab.data import load_cifar10
from cifarlab.training.config import get_preset
from cifarlab.training.train import train


def parse_overrides(pairs: list[str]) -> tuple[dict, dict]:
    fields, options = {}, {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key.startswith("model_options."):
            options[key.split(".", 1)[1]] = value
        else:
            fields[key] = value
    return fields, options


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fast")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--keep-runs", type=Path, help="keep each run directory under this folder (default: discard)")
    args = p.parse_args()

    fields, options = parse_overrides(args.set)
    base = get_preset(args.preset)
    config = base.replace(**fields, model_options={**base.model_options, **options})
    data = load_cifar10(args.data_dir)
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            out = args.keep_runs / f"{args.output.stem}-seed{seed}" if args.keep_runs else Path(tmp) / "run"
            started = time.perf_counter()
            results = train(config.replace(seed=seed), out, data=data, device=args.device, progress=False)
            total = time.perf_counter() - started
            history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs.append(
            {
                "seed": seed,
                "test_accuracy": results["test_accuracy"],
                "val_accuracy": results["final_val_accuracy"],
                "train_seconds": results["train_seconds"],
                "eval_seconds": results["eval_seconds"],
                "setup_seconds": total - results["train_seconds"] - results["eval_seconds"],
                "curve": [
                    {"epoch": h["epoch"], "elapsed_seconds": h["elapsed_seconds"], "val_accuracy": h["val_accuracy"]}
                    for h in history
                ],
            }
        )
        print(f"seed {seed}: test {results['test_accuracy']:.2%} val {results['final_val_accuracy']} "
              f"train {results['train_seconds']:.1f}s", flush=True)
    report = {
        "preset": args.preset,
        "overrides": args.set,
        "config": config.to_dict(),
        "device": results["device"],
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
        "runs": runs,
        "test_accuracy": summary([r["test_accuracy"] for r in runs]),
        "train_seconds": summary([r["train_seconds"] for r in runs]),
    }
    if all(r["val_accuracy"] is not None for r in runs):
        report["val_accuracy"] = summary([r["val_accuracy"] for r in runs])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, report)
    print(json.dumps({k: report[k] for k in ("test_accuracy", "train_seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
