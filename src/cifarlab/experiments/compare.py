"""`cifarlab compare RUNDIR...`: one HTML page overlaying several runs' training curves and
tabulating their results and configs side by side, with the settings that differ highlighted;
runs measured by `cifarlab evaluate --corruptions` also get their robustness side by side.

A run that has not finished has no results.json; its test accuracy is its checkpoint's on the
test set, measured as `cifarlab report` measures it (experiments/predictions.py), so the two
pages show the same figure. The page and its PNGs go to a folder of their own (never into a run
directory).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from cifarlab.common.rundir import CONFIG, ROBUSTNESS, RunError
from cifarlab.errors import CifarlabError
from cifarlab.experiments import pages
from cifarlab.experiments.figures import curves_figure, lr_time_figure
from cifarlab.experiments.pages import Note
from cifarlab.experiments.predictions import checkpoint_predictions
from cifarlab.experiments.runs import RunView, flatten_config, load_run
from cifarlab.inference.robustness import run_robustness
from cifarlab.models.measure import describe_model

COMPARE = "compare.html"
FIGURES = {"curves": "compare-curves.png", "time": "compare-lr-time.png"}


def run_labels(views: list[RunView]) -> list[str]:
    """Short unique names: the directory names, or more of the path where they clash."""
    for depth in range(1, 8):
        labels = ["/".join(v.path.resolve().parts[-depth:]) for v in views]
        if len(set(labels)) == len(labels):
            return labels
    return [str(v.path) for v in views]


def shown_test_accuracy(view: RunView, data_dir: Path | str | None, device: str, log: Callable[[str], None]) -> tuple[str, str | None]:
    """A run's test accuracy as the report shows it: results.json's once finished, else its checkpoint's
    on the test set; and why there is none, when there is none."""
    if view.results:
        return pages.fmt(view.results.get("test_accuracy"), "pct"), None
    pred, missing = checkpoint_predictions(view, data_dir, device, log, progress=False)
    if pred is None:
        return "—", "; ".join(missing)
    return f"{pages.fmt(pred.accuracy, 'pct')} ({pred.source}, run not finished)", None


def results_rows(views: list[RunView], test_cells: list[str] | None = None) -> list[list[str]]:
    """The Results table; `test_cells` are the runs' test accuracies (default: results.json's)."""

    def row(label: str, get, kind: str = "") -> list[str]:
        return [label, *(pages.fmt(get(v), kind) for v in views)]

    res = lambda v, k: (v.results or {}).get(k)  # noqa: E731
    tests = test_cells if test_cells is not None else [pages.fmt(res(v, "test_accuracy"), "pct") for v in views]
    return [
        row("status", lambda v: v.status),
        row("epochs", lambda v: f"{len(v.metrics)} of {v.train.get('epochs')}"),
        ["test accuracy", *tests],
        row("best validation accuracy", lambda v: v.best_val_accuracy(), "pct"),
        row("final validation accuracy", lambda v: v.final_val_accuracy(), "pct"),
        row("parameters", lambda v: res(v, "params") or v.config.get("params"), "int"),
        row("forward GFLOPs per image", _gflops),
        row("time per epoch", lambda v: res(v, "seconds_per_epoch") or (v.train_seconds() / len(v.metrics) if v.metrics else None), "s"),
        row("training time", lambda v: v.train_seconds(), "s"),
        row("time to stabilise", _stabilised),
        row("device", lambda v: res(v, "device") or v.config.get("device")),
        row("processor", lambda v: res(v, "processor")),
        row("training dtype", lambda v: res(v, "autocast_dtype") or v.config.get("autocast_dtype")),
    ]


def _gflops(view: RunView) -> str | None:
    """Counted by torch.utils.flop_counter on the run's model (built on the meta device: no memory)."""
    try:
        return f"{describe_model(view.train['model'], **view.train.get('model_options', {}))['gflops']:.3f}"
    except (KeyError, TypeError, CifarlabError):
        return None  # a config without a model, or one this version cannot build


def _stabilised(view: RunView) -> str | None:
    epoch, seconds = view.stabilised()
    return None if epoch is None else f"epoch {epoch}, {pages.fmt(seconds, 's')}"


def robustness_context(views: list[RunView]) -> dict | None:
    """Each run's robustness.json side by side (mean corruption accuracy, its drop, each corruption's
    mean over severities, CIFAR-10.1), when any run has one; sources that differ are highlighted."""
    results = [run_robustness(v.path) or {} for v in views]
    if not any(results):
        return None
    parts = [r.get("corruptions") or {} for r in results]
    shifted = [r.get("cifar10_1") or {} for r in results]
    names = list(dict.fromkeys(name for part in parts for name in part.get("accuracy", {})))
    sources = [["corrupted images", *map(_corruption_source, parts)], ["CIFAR-10.1 source", *(s.get("source") for s in shifted)]]
    figures = [
        ["clean accuracy", *(r.get("clean", {}).get("accuracy") for r in results)],
        ["mean corruption accuracy", *(p.get("mean_accuracy") for p in parts)],
        ["relative drop from clean", *(p.get("relative_drop") for p in parts)],
        *([name, *(_mean(p.get("accuracy", {}).get(name)) for p in parts)] for name in names),
        ["CIFAR-10.1 accuracy", *(s.get("accuracy") for s in shifted)],
        ["CIFAR-10.1 relative drop", *(s.get("relative_drop") for s in shifted)],
    ]
    rows = [[row[0], *map(pages.fmt, row[1:])] for row in sources] + [[row[0], *(pages.fmt(v, "pct") for v in row[1:])] for row in figures]
    differs = ["differs" if len({v for v in row[1:] if v is not None}) > 1 else "" for row in sources]
    return {"file": ROBUSTNESS, "rows": rows, "classes": differs + [""] * len(figures), "sources_differ": any(differs)}


def _corruption_source(part: dict) -> str | None:
    if not part:
        return None
    seed = f", seed {part['seed']}" if "seed" in part else ""
    return f"{part['source']}{seed}; {part['images']:,} images"


def _mean(row: list[float] | None) -> float | None:
    return sum(row) / len(row) if row else None


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


def compare_runs(
    paths: list[Path | str],
    out: Path | str,
    data_dir: Path | str | None = None,
    device: str = "auto",
    log: Callable[[str], None] = lambda s: None,
) -> Path:
    """Write OUT/compare.html and OUT/compare-*.png for the given runs; returns the page's path.
    `data_dir` and `device` serve the test accuracy of runs that have not finished, the one slow step:
    `log` hears about it (a comparison of finished runs draws two figures and says nothing)."""
    views = [load_run(p) for p in paths]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: is a file; name a folder for the comparison")
    if (out / CONFIG).exists():
        raise RunError(f"{out}: is a run directory; choose another --out for the comparison")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _write_comparison(views, out, data_dir, device, log)
    except BaseException:
        if created:  # a failed comparison leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _partial_notes(views: list[RunView], labels: list[str]) -> list[Note]:
    return [
        Note(
            f"Partial: {label} is {view.status}"
            + (" and its metrics.jsonl ends in a cut line" if view.partial else "")
            + f"; showing its {len(view.metrics)} complete epochs."
        )
        for view, label in zip(views, labels)
        if view.partial or view.status != "finished"
    ]


def _write_comparison(views: list[RunView], out: Path, data_dir, device: str, log: Callable[[str], None]) -> Path:
    labels = run_labels(views)
    notes = _partial_notes(views, labels)
    tests = []
    for view, label in zip(views, labels):
        cell, missing = shown_test_accuracy(view, data_dir, device, log)
        tests.append(cell)
        if missing:
            notes.append(Note(f"No test accuracy for {label}: {missing}"))
    curves = pages.save_png(curves_figure(views, labels), out / FIGURES["curves"])
    lr_time = pages.save_png(lr_time_figure(views, labels), out / FIGURES["time"])
    settings, setting_classes, differing = config_rows(views)
    page = out / COMPARE
    pages.write_page(
        page,
        pages.render(
            "compare.html",
            labels=labels,
            written=time.strftime("%Y-%m-%d %H:%M:%S"),
            notes=notes,
            results=results_rows(views, tests),
            robustness=robustness_context(views),
            curves=pages.data_uri(curves),
            lr_time=pages.data_uri(lr_time),
            settings=settings,
            setting_classes=setting_classes,
            differing=differing,
            runs=[[label, str(v.path.resolve())] for label, v in zip(labels, views)],
        ),
    )
    return page
