"""Train presets with several seeds in one benchmark run; write every run's accuracy and seconds,
their summary, each preset's training time as a fraction of the anchor's, and (--plot) a figure.

    python benchmarks/time_to_accuracy.py --preset airbench94 --seeds 1 --preset fast --seeds 3 \\
        --device cpu --data-dir ../shared/cifar10 --output benchmarks/results/time-to-accuracy-cpu.json \\
        --plot docs/time-to-accuracy.png

`--seeds` after a `--preset` applies to it (default 3). The first preset named `airbench94` (or
`--anchor NAME`) is the anchor: every preset's mean training time is also given as a fraction of
the anchor's, measured in the same process on the same machine. Per run: test accuracy (with the
preset's TTA), final validation accuracy, and results.json's timing (set-up, training, per-epoch
validation, final test evaluation, wall clock; the records time training plus the final TTA
evaluation, `training_plus_test_evaluation_seconds`), and the validation accuracy after every epoch
with the training seconds so far. `--set FIELD=VALUE` (the `train --set` syntax, one parser)
overrides settings of every preset; `--with FIELD=VALUE` after a `--preset` changes that entry
only (repeatable), and the entry is named after both, so one run can hold a budget curve:

    python benchmarks/time_to_accuracy.py --preset airbench94 --seeds 1 \
        --preset airbench94 --seeds 1 --with epochs=2 --preset airbench94 --seeds 1 --with epochs=4 ... \
        --preset fast --seeds 3 --preset fast --seeds 1 --with epochs=4 ... --plot docs/time-to-accuracy.png

The plot draws each preset's entries as one curve: mean test accuracy (bars: std over seeds)
against mean training seconds. Nothing else should run on the machine while this times.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from measure import machine_facts, summary

from cifarlab.common.files import atomic_write_json
from cifarlab.common.rundir import RunDir
from cifarlab.data import load_cifar10
from cifarlab.runtime import autocast_dtype, resolve_device
from cifarlab.training.config import apply_overrides, parse_assignment
from cifarlab.training.presets import get_preset
from cifarlab.training.train import train


class PresetSeeds(argparse.Action):
    """--preset NAME [--seeds N] [--with FIELD=VALUE ...]: a list of [name, seeds, overrides],
    seeds defaulting to 3."""

    def __call__(self, parser, namespace, value, option_string=None):
        plan = getattr(namespace, "plan", None) or []
        if option_string == "--preset":
            plan.append([value, 3, {}])
        elif not plan:
            parser.error(f"{option_string} comes after the --preset it applies to")
        elif option_string == "--seeds":
            plan[-1][1] = int(value)
        else:
            key, setting = parse_assignment(value)
            plan[-1][2][key] = setting
        namespace.plan = plan


def entry_name(preset: str, overrides: dict) -> str:
    """'fast', or 'airbench94 epochs=2' for an entry with --with settings."""
    return " ".join([preset, *(f"{k}={json.dumps(v)}" for k, v in overrides.items())])


def one_run(config, seed: int, data, device: str, train_subset: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        results = train(config.replace(seed=seed), out, train_subset=train_subset, data=data, device=device, progress=False)
        history, _ = RunDir(out).metrics()
    training = 0.0
    curve = []
    for h in history:
        training += h["train_seconds"]
        curve.append({"epoch": h["epoch"], "training_seconds": training, "val_accuracy": h["val_accuracy"]})
    return {
        "seed": seed,
        "test_accuracy": results["test_accuracy"],
        "val_accuracy": results["final_val_accuracy"],
        "epochs": results["epochs"],
        "timing": results["timing"],
        "curve": curve,
    }


def preset_report(name: str, seeds: int, overrides: dict, data, args) -> dict:
    config = apply_overrides(get_preset(name), overrides, source="--set")
    runs = []
    for seed in range(args.first_seed, args.first_seed + seeds):
        runs.append(one_run(config, seed, data, args.device, args.train_subset))
        r = runs[-1]
        print(f"{name} seed {seed}: test {r['test_accuracy']:.2%}, training {r['timing']['training_seconds']:.1f}s", flush=True)
    return {
        "config": config.to_dict(),
        "autocast_dtype": autocast_dtype(config.amp, resolve_device(args.device)),
        "runs": runs,
        "test_accuracy": summary([r["test_accuracy"] for r in runs]),
        "training_seconds": summary([r["timing"]["training_seconds"] for r in runs]),
        "training_plus_test_evaluation_seconds": summary([r["timing"]["training_plus_test_evaluation_seconds"] for r in runs]),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action=PresetSeeds, dest="plan", required=True, help="a preset to time (repeatable)")
    p.add_argument("--seeds", action=PresetSeeds, dest="plan", help="seeds for the preset before it (default 3)")
    p.add_argument("--with", action=PresetSeeds, dest="plan", metavar="FIELD=VALUE", help="a setting of the preset before it only")
    p.add_argument("--anchor", default="airbench94", help="the preset others are measured against (default: %(default)s)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--train-subset", type=int, help="only the first N training images (dry runs)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--plot", type=Path, help="also draw accuracy against training seconds into this PNG")
    args = p.parse_args()

    overrides = dict(parse_assignment(a) for a in args.set)
    data = load_cifar10(args.data_dir)
    device = resolve_device(args.device)
    report = {
        "command": " ".join(sys.argv),
        **machine_facts(device),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "presets": {},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for name, seeds, own in args.plan:
        report["presets"][entry_name(name, own)] = {"preset": name, **preset_report(name, seeds, {**overrides, **own}, data, args)}
        add_anchor_ratios(report, args.anchor)
        atomic_write_json(args.output, report)  # after every preset: a long benchmark keeps what it measured
    if args.plot:
        plot(report, args.plot)
    print(json.dumps({n: {k: r[k]["mean"] for k in ("test_accuracy", "training_seconds")} for n, r in report["presets"].items()}, indent=1))
    return 0


def add_anchor_ratios(report: dict, anchor: str) -> None:
    """Each preset's mean training seconds as a fraction of the anchor's, when the anchor ran."""
    if anchor not in report["presets"]:
        return
    reference = report["presets"][anchor]["training_seconds"]["mean"]
    for entry in report["presets"].values():
        entry[f"training_time_vs_{anchor}"] = entry["training_seconds"]["mean"] / reference


def schedule_note(config: dict) -> str:
    """An entry's epochs, and with progressive resolution the split: "14 ep (3/1/10)" is 3 at
    stride 2, 1 on crops and 10 at full resolution."""
    epochs, low, mid = config["epochs"], config.get("low_res_epochs", 0), config.get("mid_res_epochs", 0)
    return f"{epochs} ep ({low}/{mid}/{epochs - low - mid})" if low or mid else f"{epochs} ep"


def plot(report: dict, path: Path) -> None:
    """Each preset's entries as one curve: mean test accuracy (bars: std over seeds) against mean
    training seconds, labelled with the entry's settings."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=110)
    ax = fig.subplots()
    families: dict[str, list[tuple[str, dict]]] = {}
    for name, entry in report["presets"].items():
        families.setdefault(entry.get("preset", name), []).append((name, entry))
    for index, (preset, entries) in enumerate(families.items()):
        entries.sort(key=lambda e: e[1]["training_seconds"]["mean"])
        seconds = [e["training_seconds"]["mean"] for _, e in entries]
        accuracy = [100 * e["test_accuracy"]["mean"] for _, e in entries]
        spread = [100 * e["test_accuracy"]["std"] for _, e in entries]
        ax.errorbar(seconds, accuracy, yerr=spread, color=f"C{index}", marker="o", capsize=3, label=preset)
        for (name, entry), x, y in zip(entries, seconds, accuracy):
            seeds = entry["test_accuracy"]["n"]
            note = f"{schedule_note(entry['config'])}{'' if name[len(preset) :].strip() else ', preset'}, {seeds} seed{'s' if seeds > 1 else ''}"
            ax.annotate(
                note, (x, y), fontsize=7, xytext=(-4, 6) if index == 0 else (4, -10), textcoords="offset points", ha="right" if index == 0 else "left"
            )
    ax.margins(x=0.15)  # room for the rightmost labels
    ax.axhline(94, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("training seconds (per-epoch validation and final evaluation not counted)")
    ax.set_ylabel("test accuracy (%, TTA as the preset)")
    ax.set_title(f"Time to accuracy on {report['processor']} ({report['threads']} threads, torch {report['torch_version']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
