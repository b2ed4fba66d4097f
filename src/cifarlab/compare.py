"""`cifarlab compare RUNDIR...`: one HTML page overlaying several runs' training curves and
tabulating their results and configs side by side, with the settings that differ highlighted.

The page and its PNGs go to a folder of their own (never into a run directory).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from cifarlab import pages
from cifarlab.report import flatten_config
from cifarlab.rundir import CONFIG, RunError
from cifarlab.runs import RunView, load_run

COMPARE = "compare.html"
FIGURES = {"curves": "compare-curves.png", "time": "compare-lr-time.png"}


def run_labels(views: list[RunView]) -> list[str]:
    """Short unique names: the directory names, or more of the path where they clash."""
    for depth in range(1, 8):
        labels = ["/".join(v.path.resolve().parts[-depth:]) for v in views]
        if len(set(labels)) == len(labels):
            return labels
    return [str(v.path) for v in views]


def curves_figure(views: list[RunView], labels: list[str]):
    """Train/validation loss and accuracy per epoch, one line per run."""
    fig = pages.new_figure(12, 7.5)
    axes = fig.subplots(2, 2)
    panels = (("train_loss", "Training loss"), ("val_loss", "Validation loss"),
              ("train_accuracy", "Training accuracy (%)"), ("val_accuracy", "Validation accuracy (%)"))
    for ax, (key, title) in zip(axes.ravel(), panels):
        for view, label in zip(views, labels):
            points = [(m["epoch"], m.get(key)) for m in view.metrics if m.get(key) is not None]
            if points:
                x, y = zip(*points)
                ax.plot(x, [100 * v for v in y] if "accuracy" in key else y, marker="o", markersize=3, label=pages.plain(label))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1, 1].legend(fontsize=8)
    return fig


def lr_time_figure(views: list[RunView], labels: list[str]):
    """Learning rate per epoch, and validation accuracy against wall-clock training time."""
    fig = pages.new_figure(12, 3.8)
    ax_lr, ax_time = fig.subplots(1, 2)
    for view, label in zip(views, labels):
        if not view.metrics:
            continue
        ax_lr.plot([m["epoch"] for m in view.metrics], [m["lr"] for m in view.metrics], marker="o", markersize=3, label=pages.plain(label))
        points = [(m["elapsed_seconds"], 100 * m["val_accuracy"]) for m in view.metrics if m.get("val_accuracy") is not None]
        if points:
            ax_time.plot(*zip(*points), marker="o", markersize=3, label=pages.plain(label))
    ax_lr.set_title("Learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.ticklabel_format(axis="y", useOffset=False)
    ax_lr.xaxis.get_major_locator().set_params(integer=True)
    ax_time.set_title("Validation accuracy (%) against training time")
    ax_time.set_xlabel("seconds")
    for ax in (ax_lr, ax_time):
        ax.grid(alpha=0.3)
    ax_time.legend(fontsize=8)
    return fig


def results_rows(views: list[RunView]) -> list[list[str]]:
    def row(label: str, get, kind: str = "") -> list[str]:
        return [label, *(pages.fmt(get(v), kind) for v in views)]

    res = lambda v, k: (v.results or {}).get(k)  # noqa: E731
    return [
        row("status", lambda v: v.status),
        row("epochs", lambda v: f"{len(v.metrics)} of {v.train.get('epochs')}"),
        row("test accuracy", lambda v: res(v, "test_accuracy"), "pct"),
        row("best validation accuracy", lambda v: v.best_val_accuracy(), "pct"),
        row("final validation accuracy", lambda v: v.final_val_accuracy(), "pct"),
        row("parameters", lambda v: res(v, "params") or v.config.get("params"), "int"),
        row("time per epoch", lambda v: res(v, "seconds_per_epoch") or (v.train_seconds() / len(v.metrics) if v.metrics else None), "s"),
        row("training time", lambda v: v.train_seconds(), "s"),
        row("device", lambda v: res(v, "device") or v.config.get("device")),
    ]


def config_rows(views: list[RunView]) -> tuple[list[list[str]], list[str], list[str]]:
    """Side-by-side settings, the row classes ("differs" where runs disagree) and the differing names."""
    flats = [flatten_config(v) for v in views]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    missing = object()
    rows, classes, differing = [], [], []
    for key in keys:
        values = [flat.get(key, missing) for flat in flats]
        differs = any(v != values[0] for v in values[1:])
        rows.append([key, *("—" if v is missing else pages.fmt(v) for v in values)])
        classes.append("differs" if differs else "")
        if differs:
            differing.append(key)
    return rows, classes, differing


def compare_runs(paths: list[Path | str], out: Path | str) -> Path:
    """Write OUT/compare.html and OUT/compare-*.png for the given runs; returns the page's path."""
    views = [load_run(p) for p in paths]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: is a file; name a folder for the comparison")
    if (out / CONFIG).exists():
        raise RunError(f"{out}: is a run directory; choose another --out for the comparison")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _write_comparison(views, out)
    except BaseException:
        if created:  # a failed comparison leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_comparison(views: list[RunView], out: Path) -> Path:
    labels = run_labels(views)
    body: list[str] = []
    for view, label in zip(views, labels):
        if view.partial or view.status != "finished":
            body.append(pages.note(f"Partial: {label} is {view.status}" + (" and its metrics.jsonl ends in a cut line" if view.partial else "")
                                   + f"; showing its {len(view.metrics)} complete epochs."))
    body.append("<h2>Results</h2>" + pages.table(["", *labels], results_rows(views)))
    body.append("<h2>Curves</h2>" + pages.image(pages.save_png(curves_figure(views, labels), out / FIGURES["curves"]), "overlaid training curves"))
    body.append(pages.image(pages.save_png(lr_time_figure(views, labels), out / FIGURES["time"]), "learning rate and validation accuracy against time"))
    rows, classes, differing = config_rows(views)
    summary = "Settings that differ (highlighted): " + (", ".join(differing) if differing else "none")
    body.append(f"<h2>Configs</h2><p>{pages.esc(summary)}.</p>" + pages.table(["setting", *labels], rows, classes, num_from=99))
    body.append("<h2>Runs</h2>" + pages.table(["run", "directory"], [[lab, str(v.path.resolve())] for lab, v in zip(labels, views)], num_from=99))
    page = out / COMPARE
    pages.write_page(page, pages.page(f"Comparison of {len(views)} runs", f"written {time.strftime('%Y-%m-%d %H:%M:%S')}", body))
    return page
