"""Validation accuracy of finished runs at each test-time augmentation level (0, 1, 2).

    python benchmarks/tta_ablation.py RUNDIR... --data-dir ../shared/cifar10 --output benchmarks/results/tta.json

Uses each run's own validation split (same size and seed as in training), never the test set.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from cifarlab.common.checkpoint import load_checkpoint
from cifarlab.common.files import atomic_write_json
from cifarlab.common.metrics import evaluate
from cifarlab.common.rundir import RunDir
from cifarlab.data import load_cifar10, split_train_val
from cifarlab.models.checkpoint import model_from_checkpoint
from cifarlab.training.config import TrainConfig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()
    data = load_cifar10(args.data_dir)
    rows = []
    for path in args.runs:
        config = TrainConfig.from_dict(RunDir(path).require().config()["train"])
        model, meta = model_from_checkpoint(load_checkpoint(path), str(path))
        _, val_idx = split_train_val(data.train_labels, config.val_size)
        x, y = data.train_images[val_idx], data.train_labels[val_idx]
        row = {"run": str(path)}
        for tta in (0, 1, 2):
            row[f"tta{tta}"] = evaluate(model, x, y, meta["mean"], meta["std"], tta=tta, amp=False, channels_last=meta["channels_last"]).accuracy
        rows.append(row)
        print(row, flush=True)
    summary = {f"tta{t}": statistics.fmean(r[f"tta{t}"] for r in rows) for t in (0, 1, 2)}
    atomic_write_json(args.output, {"runs": rows, "mean_val_accuracy": summary, "command": " ".join(sys.argv)})
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
