"""`cifarlab compare RUNDIR...`: one HTML page overlaying several runs' training curves and
tabulating their results and configs side by side, with the settings that differ highlighted;
runs measured by `cifarlab evaluate --corruptions` also get their robustness side by side.

The page and its PNGs go to a folder of their own (never into a run directory).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from cifarlab.common.rundir import CONFIG, ROBUSTNESS, RunError
from cifarlab.errors import CifarlabError
from cifarlab.experiments import pages
from cifarlab.experiments.figures import curves_figure, lr_time_figure
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


def robustness_sections(views: list[RunView], labels: list[str]) -> list[str]:
    """Each run's robustness.json side by side (mean corruption accuracy, its drop, each corruption's
    mean over severities, CIFAR-10.1), when any run has one; sources that differ are highlighted."""
    results = [run_robustness(v.path) or {} for v in views]
    if not any(results):
        return []
    parts = [r.get("corruptions") or {} for r in results]
    shifted = [r.get("cifar10_1") or {} for r in results]
    names = list(dict.fromkeys(name for part in parts for name in part.get("accuracy", {})))
    sources = [["corrupted images", *map(_corruption_source, parts)], ["CIFAR-10.1 source", *(s.get("source") for s in shifted)]]
    figures = [["clean accuracy", *(r.get("clean", {}).get("accuracy") for r in results)],
               ["mean corruption accuracy", *(p.get("mean_accuracy") for p in parts)],
               ["relative drop from clean", *(p.get("relative_drop") for p in parts)],
               *([name, *(_mean(p.get("accuracy", {}).get(name)) for p in parts)] for name in names),
               ["CIFAR-10.1 accuracy", *(s.get("accuracy") for s in shifted)],
               ["CIFAR-10.1 relative drop", *(s.get("relative_drop") for s in shifted)]]
    cells = [[row[0], *map(pages.fmt, row[1:])] for row in sources] + [[row[0], *(pages.fmt(v, "pct") for v in row[1:])] for row in figures]
    differs = ["differs" if len({v for v in row[1:] if v is not None}) > 1 else "" for row in sources]
    classes = differs + [""] * len(figures)
    note = pages.note("The runs were measured on different images (highlighted): compare their accuracies with care.") if any(differs) else ""
    return [f'<h2>Robustness</h2><p class="sub">From each run\'s {pages.esc(ROBUSTNESS)} (cifarlab evaluate --corruptions); '
            "a corruption's row is its mean over severities 1-5.</p>" + note + pages.table(["", *labels], cells, classes)]


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
    body += robustness_sections(views, labels)
    body.append("<h2>Curves</h2>" + pages.image(pages.save_png(curves_figure(views, labels), out / FIGURES["curves"]), "overlaid training curves"))
    body.append(pages.image(pages.save_png(lr_time_figure(views, labels), out / FIGURES["time"]), "learning rate and validation accuracy against time"))
    rows, classes, differing = config_rows(views)
    summary = "Settings that differ (highlighted): " + (", ".join(differing) if differing else "none")
    body.append(f"<h2>Configs</h2><p>{pages.esc(summary)}.</p>" + pages.table(["setting", *labels], rows, classes, num_from=99))
    body.append("<h2>Runs</h2>" + pages.table(["run", "directory"], [[lab, str(v.path.resolve())] for lab, v in zip(labels, views)], num_from=99))
    page = out / COMPARE
    pages.write_page(page, pages.page(f"Comparison of {len(views)} runs", f"written {time.strftime('%Y-%m-%d %H:%M:%S')}", body))
    return page
