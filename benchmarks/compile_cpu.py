"""torch.compile (inductor) against eager for a preset's training, measured in real runs: seconds
per epoch (the low-resolution and full-resolution epochs apart) and compile seconds apart.

    python benchmarks/compile_cpu.py --preset fast --set epochs=3 --set low_res_epochs=1 \\
        --data-dir ../shared/cifar10 --output benchmarks/results/compile-fast-cpu.json

Each run trains on the 45,000/5,000 split (`--set val_size=...` to change it). `compile_seconds` is
the first compilation, done before the first epoch; a change of input shape (the stem's stride,
an intermediate resolution's crops, a last smaller batch) compiles again inside the epoch that
meets it, and that time is inside the epoch's seconds. Nothing else should run while this times.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from measure import machine_facts

from cifarlab.common.files import atomic_write_json
from cifarlab.common.rundir import RunDir
from cifarlab.data import load_cifar10
from cifarlab.runtime import resolve_device
from cifarlab.training.config import apply_overrides, parse_assignment
from cifarlab.training.presets import get_preset
from cifarlab.training.train import train


def one_run(config, data, device: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        results = train(config, Path(tmp) / "run", data=data, device=device, progress=False)
        history, _ = RunDir(Path(tmp) / "run").metrics()
    epochs = [{"epoch": h["epoch"], "low_res": h["epoch"] <= config.low_res_epochs, "train_seconds": h["train_seconds"]} for h in history]
    return {
        "compile": config.compile,
        "compile_seconds": results["compile_seconds"],
        "training_seconds": results["timing"]["training_seconds"],
        "training_plus_compile_seconds": results["timing"]["training_seconds"] + (results["compile_seconds"] or 0.0),
        "epochs": epochs,
        "val_accuracy": results["final_val_accuracy"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fast")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a setting")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()
    overrides = {"val_size": 5000, **dict(parse_assignment(text) for text in args.set)}
    config = apply_overrides(get_preset(args.preset), overrides, "--set")
    data = load_cifar10(args.data_dir)
    runs = []
    for compiled in (False, True):
        runs.append(one_run(config.replace(compile=compiled), data, args.device))
        r = runs[-1]
        epochs = [round(e["train_seconds"], 1) for e in r["epochs"]]
        print(f"compile={compiled}: training {r['training_seconds']:.1f}s, compile {r['compile_seconds'] or 0:.1f}s, epochs {epochs}", flush=True)
    dev = resolve_device(args.device)
    result = {
        "command": " ".join(sys.argv),
        "preset": args.preset,
        "config": config.to_dict(),
        **machine_facts(dev, config.amp),
        "runs": runs,
        "saved_seconds": runs[0]["training_seconds"] - runs[1]["training_plus_compile_seconds"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
