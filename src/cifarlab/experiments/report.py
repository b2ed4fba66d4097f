"""`cifarlab report RUNDIR`: one self-contained HTML page about a run, plus its figures as PNGs.

The page holds the config and headline figures, training curves, per-class accuracy, the
confusion matrix, the most confidently wrong test images and the most confused class pairs, and
a reliability diagram with the expected calibration error, NLL and Brier score (and a second one
after temperature scaling when `cifarlab calibrate` has fitted a temperature). The last four need the model's
predictions on the test set, so the report loads the run's checkpoint and the data; when either
is missing, the page still shows what the run directory holds and says what is missing. A run
that is still training (or was killed) gets a report of what exists so far, marked as partial.

A run that `cifarlab evaluate --corruptions` (or --cifar101-dir) has measured also gets a
robustness section from its robustness.json: accuracy by corruption and severity as a heat map,
the mean corruption accuracy and its drop from clean accuracy.

The page is the template templates/report.html, rendered with autoescape (experiments/pages.py),
so nothing read from the run folder can add markup to it. Only the report's own files are written
into the run directory: report.html and report-*.png.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from cifarlab.common import metrics
from cifarlab.common.rundir import (
    CALIBRATION,
    CHECKPOINT,
    METRICS,
    RESULTS,
    ROBUSTNESS,
    RunDir,
    RunError,
)
from cifarlab.experiments import pages
from cifarlab.experiments.figures import calibration_figure, confusion_figure, errors_figure, per_class_figure, robustness_figure, run_curves_figure
from cifarlab.experiments.pages import Note
from cifarlab.experiments.predictions import Predictions, checkpoint_predictions
from cifarlab.experiments.runs import RunView, flatten_config, load_run
from cifarlab.inference.model import stored_temperature
from cifarlab.inference.robustness import run_robustness
from cifarlab.training.config import inactive_fields

REPORT = "report.html"
FIGURES = {
    "curves": "report-curves.png",
    "per_class": "report-per-class.png",
    "confusion": "report-confusion.png",
    "errors": "report-errors.png",
    "calibration": "report-calibration.png",
}
CALIBRATED_FIGURE = "report-calibration-scaled.png"  # only for a run `cifarlab calibrate` has calibrated
ROBUSTNESS_FIGURE = "report-robustness.png"  # apart from FIGURES: drawn only for a run evaluated with --corruptions
ALL_FIGURES = {*FIGURES.values(), CALIBRATED_FIGURE, ROBUSTNESS_FIGURE}
CALIBRATION_BINS = metrics.CALIBRATION_BINS
WRONG_SHOWN = 24
PAIRS_SHOWN = 10


@dataclass(frozen=True)
class FigureWriter:
    """Draws the report's figures into the run folder, saying which as it goes (minutes on a CPU)."""

    folder: Path
    log: Callable[[str], None]
    drawn: set[str] = field(default_factory=set)

    def draw(self, name: str, make: Callable[[], Figure]) -> str:
        """Draw and save one figure; its data URI for the page."""
        self.log(f"drawing {name}")
        self.drawn.add(name)
        return pages.data_uri(pages.save_png(make(), self.folder / name))

    def remove_stale(self) -> None:
        """An earlier report's figures this one did not draw (a calibration or robustness file gone since)."""
        for name in ALL_FIGURES - self.drawn:
            (self.folder / name).unlink(missing_ok=True)


# ---------------------------------------------------------------- analysis


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Reliability per confidence bin and the expected calibration error (`common.metrics.reliability`),
    as numpy arrays for the figure and the table."""
    cal = metrics.reliability(torch.from_numpy(probs), torch.from_numpy(labels), bins)
    return {key: value if key == "ece" else value.numpy() for key, value in cal.items()}


def as_logits(probs: np.ndarray) -> torch.Tensor:
    """Logits for softmax outputs: log p differs from the logits by one constant per image, which the
    softmax ignores. A probability that underflowed to 0 is taken as float32's smallest normal one."""
    return torch.from_numpy(probs).double().clamp(min=torch.finfo(torch.float32).tiny).log()


def scaled_probabilities(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The softmax of logits / T, from the softmax outputs alone."""
    return torch.softmax(as_logits(probs) / temperature, 1).numpy()


def confused_pairs(confusion: np.ndarray, classes: list[str], top: int = PAIRS_SHOWN) -> list[tuple[str, str, int, float]]:
    """The largest off-diagonal entries: (true class, predicted class, count, share of the true class)."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1]
    totals = confusion.sum(1)
    pairs = []
    for flat in order[:top]:
        t, p = divmod(int(flat), len(classes))
        if off[t, p] == 0:
            break
        pairs.append((classes[t], classes[p], int(off[t, p]), off[t, p] / max(1, totals[t])))
    return pairs


def most_confident_errors(pred: Predictions, top: int = WRONG_SHOWN) -> np.ndarray:
    """Indices of wrong test predictions, most confident first."""
    wrong = np.flatnonzero(pred.preds != pred.labels)
    return wrong[np.argsort(-pred.probs[wrong].max(1), kind="stable")][:top]


# ---------------------------------------------------------------- calibration section


def stored_calibration(view: RunView, pred: Predictions) -> tuple[dict | None, str | None]:
    """The run's calibration.json when it fits the checkpoint the report predicted with, else None
    and, when there is a file that cannot be used (stale or damaged), why."""
    run = RunDir(view.path)
    if not run.file(CALIBRATION).exists():
        return None, None
    try:
        stored_temperature(run.file(CHECKPOINT), pred.epoch)
        return run.calibration(), None
    except RunError as e:
        return None, str(e)


def calibration_context(view: RunView, pred: Predictions, cal: dict, figures: FigureWriter) -> dict:
    """ECE, NLL and Brier score with the reliability diagram; the same after temperature scaling
    when the run has been calibrated (`cifarlab calibrate`)."""
    stored, problem = stored_calibration(view, pred)
    logits, labels = as_logits(pred.probs), torch.from_numpy(pred.labels)
    scores = [(f"test set (tta={pred.tta})", metrics.calibration_scores(logits, labels))]
    diagrams = [reliability_diagram(figures.draw(FIGURES["calibration"], lambda: calibration_figure(cal)), "reliability diagram", cal)]
    scaled = None
    if stored is not None:
        temperature = stored["temperature"]
        scores.append((f"after temperature scaling (T = {temperature:.3f})", metrics.calibration_scores(logits, labels, temperature)))
        scaled_cal = calibration(scaled_probabilities(pred.probs, temperature), pred.labels)
        uri = figures.draw(CALIBRATED_FIGURE, lambda: calibration_figure(scaled_cal, f"After temperature scaling, T = {temperature:.3f}"))
        diagrams.append(reliability_diagram(uri, "reliability diagram after temperature scaling", scaled_cal))
        scaled = {
            "temperature": f"{temperature:.4f}",
            "fitted_on": stored.get("fitted_on", "validation split"),
            "tta": stored.get("tta", 0),
            "nll_before": pages.fmt(stored.get("val_nll_before")),
            "nll_after": pages.fmt(stored.get("val_nll_after")),
        }
    return {
        "ece": pages.fmt(cal["ece"], "pct"),
        "bins": CALIBRATION_BINS,
        "smoothing": smoothing_note(view.train),
        "scaled": scaled,
        "problem": problem,
        "run_path": str(view.path),
        "scores": [(name, pages.fmt(s["ece"], "pct"), f"{s['nll']:.4f}", f"{s['brier']:.4f}") for name, s in scores],
        "diagrams": diagrams,
    }


def reliability_diagram(uri: str, alt: str, cal: dict) -> dict:
    """A reliability diagram and its table of bins."""
    bins = [
        (f"{lo:.3f}–{hi:.3f}", int(n), pages.fmt(a if n else None, "pct"), pages.fmt(c if n else None, "pct"))
        for lo, hi, n, a, c in zip(cal["edges"][:-1], cal["edges"][1:], cal["counts"], cal["accuracy"], cal["confidence"])
    ]
    return {"image": uri, "alt": alt, "bins": bins}


def smoothing_note(train: dict) -> str | None:
    """Why a run trained with label smoothing is underconfident (and its ECE large) by design."""
    s = train.get("label_smoothing") or 0
    if not s:
        return None
    return (
        f"This run trained with label smoothing {s:g}: its targets give the true class {1 - s + s / 10:.0%} and "
        f"every other class {s / 10:.0%}, so the model learns to stay below full confidence. Accuracy above "
        "mean confidence in most bins (underconfidence) and a large calibration error follow from that by "
        "design; they do not mean the predictions are unreliable."
    )


# ---------------------------------------------------------------- the other sections


def headline(view: RunView, pred: Predictions | None, ece: float | None) -> list[tuple[str, str]]:
    """(label, value) rows: results.json when the run finished, else what the metrics and checkpoint give."""
    r = view.results or {}
    m = view.metrics
    steps = sum(x.get("steps", 0) for x in m)
    train_s = sum(x.get("train_seconds", 0.0) for x in m)
    per_step = r.get("seconds_per_step", train_s / steps if steps else None)
    per_epoch = r.get("seconds_per_epoch", m[-1]["elapsed_seconds"] / len(m) if m else None)
    stable_epoch, stable_s = view.stabilised()
    stable = "—" if stable_epoch is None else f"epoch {stable_epoch}, {pages.fmt(stable_s, 's')}"
    if not view.results and stable_epoch is not None:
        stable += " (so far)"
    return [
        ("status", view.status + (f" ({view.reason})" if view.reason else "")),
        ("epochs", f"{len(m)} of {view.train.get('epochs')}"),
        *test_rows(view, pred),
        ("best validation accuracy", pages.fmt(view.best_val_accuracy(), "pct")),
        ("final validation accuracy", pages.fmt(view.final_val_accuracy(), "pct")),
        ("expected calibration error", pages.fmt(ece, "pct")),
        ("parameters", pages.fmt(r.get("params", view.config.get("params")), "int")),
        ("time per step", pages.fmt(per_step, "s")),
        ("time per epoch", pages.fmt(per_epoch, "s")),
        ("time to stabilise", stable),
        ("training time", pages.fmt(view.train_seconds(), "s")),
        ("device", str(r.get("device", view.config.get("device", "—")))),
    ]


def test_rows(view: RunView, pred: Predictions | None) -> list[tuple[str, str]]:
    """Test accuracy: results.json's for a finished run, else the checkpoint's on the test set."""
    r = view.results
    if r:
        return [
            ("test accuracy", pages.fmt(r.get("test_accuracy"), "pct")),
            ("test error", pages.fmt(r.get("test_error"), "pct")),
            ("test loss", pages.fmt(r.get("test_loss"))),
        ]
    if pred is None:
        return [("test accuracy", "— (run not finished)")]
    tag = f" ({pred.source}, run not finished)"
    return [("test accuracy" + tag, pages.fmt(pred.accuracy, "pct")), ("test error" + tag, pages.fmt(1 - pred.accuracy, "pct"))]


def partial_notes(view: RunView) -> list[Note]:
    notes = []
    if view.partial:
        notes.append(
            Note(
                f"Partial: {METRICS} ends in a line cut short (the run was killed while writing it); "
                f"showing the {len(view.metrics)} complete epochs.",
                bad=True,
            )
        )
    if view.status != "finished":
        why = f": {view.reason}" if view.reason else ""
        state = view.status if view.status != "unknown" else "of unknown state (no status.json)"
        notes.append(
            Note(
                f"Partial: the run is {state}{why}. This report shows what exists so far ({len(view.metrics)} of {view.train.get('epochs')} epochs).",
                bad=view.status == "failed",
            )
        )
    return notes


def per_class_context(view: RunView, pred: Predictions | None, figures: FigureWriter) -> dict | None:
    """Per-class accuracy from the checkpoint's predictions (with the confusion matrix), else results.json's."""
    if pred is not None:
        confusion, classes = pred.confusion(), pred.classes
        per_class = (np.diag(confusion) / np.maximum(confusion.sum(1), 1)).tolist()
        source = f"checkpoint of epoch {pred.epoch} on {len(pred.labels):,} test images, tta={pred.tta}"
    elif view.results and view.results.get("per_class_accuracy"):
        confusion, classes = None, list(view.results["per_class_accuracy"])
        per_class = list(view.results["per_class_accuracy"].values())
        source = RESULTS
    else:
        return None
    return {
        "source": source,
        "rows": [(c, pages.fmt(a, "pct")) for c, a in zip(classes, per_class)],
        "image": figures.draw(FIGURES["per_class"], lambda: per_class_figure(classes, per_class)),
        "confusion": None if confusion is None else figures.draw(FIGURES["confusion"], lambda: confusion_figure(confusion, classes)),
    }


def errors_context(pred: Predictions, figures: FigureWriter) -> dict:
    """The most confused class pairs and the most confidently wrong images."""
    wrong = most_confident_errors(pred)
    pairs = confused_pairs(pred.confusion(), pred.classes)
    return {
        "pairs": [(t, p, n, pages.fmt(s, "pct")) for t, p, n, s in pairs],
        "image": figures.draw(FIGURES["errors"], lambda: errors_figure(pred, wrong)) if len(wrong) else None,
    }


def robustness_context(view: RunView, figures: FigureWriter) -> dict | None:
    """The robustness section, when `cifarlab evaluate --corruptions` (or --cifar101-dir) has written
    robustness.json: headline figures, the heat map of accuracy by corruption and severity, the table."""
    result = run_robustness(view.path)
    if result is None:
        return None
    clean, corruptions, shifted = result["clean"], result.get("corruptions"), result.get("cifar10_1")
    rows = [("clean accuracy", f"{pages.fmt(clean['accuracy'], 'pct')} on the first {clean['images']:,} test images")]
    if corruptions:
        seed = f", seed {corruptions['seed']}" if "seed" in corruptions else ""
        rows += [
            ("corrupted images", f"{corruptions['source']}{seed}; {corruptions['images']:,} per corruption and severity"),
            ("mean corruption accuracy", pages.fmt(corruptions["mean_accuracy"], "pct")),
            ("relative drop from clean", pages.fmt(corruptions.get("relative_drop"), "pct")),
        ]
    if shifted:
        rows += [
            (f"{shifted['source']} accuracy", f"{pages.fmt(shifted['accuracy'], 'pct')} on {shifted['images']:,} images"),
            (f"{shifted['source']} relative drop", pages.fmt(shifted.get("relative_drop"), "pct")),
        ]
    context = {"file": ROBUSTNESS, "epoch": result.get("epoch"), "tta": result.get("tta"), "rows": rows, "heat_map": None}
    if corruptions:
        context["heat_map"] = figures.draw(ROBUSTNESS_FIGURE, lambda: robustness_figure(corruptions, clean["accuracy"]))
        context["table"] = [
            (name, *(pages.fmt(a, "pct") for a in row), pages.fmt(sum(row) / len(row), "pct")) for name, row in corruptions["accuracy"].items()
        ]
    return context


def epoch_rows(metrics: list[dict]) -> list[tuple]:
    return [
        (
            m["epoch"],
            pages.fmt(m["lr"]),
            pages.fmt(m.get("train_loss")),
            pages.fmt(m.get("train_accuracy"), "pct"),
            pages.fmt(m.get("val_loss")),
            pages.fmt(m.get("val_accuracy"), "pct"),
            pages.fmt(m.get("epoch_seconds"), "s"),
        )
        for m in metrics
    ]


# ---------------------------------------------------------------- the page


def build_report(
    path: Path | str,
    data_dir: Path | str | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> Path:
    """Write RUNDIR/report.html and RUNDIR/report-*.png; returns the page's path."""
    view = load_run(path)
    pred, missing = checkpoint_predictions(view, data_dir, device, log, progress)
    notes = partial_notes(view) + [Note(f"Missing: {m}") for m in missing]
    if pred is not None and pred.resolution_note:
        notes.append(Note(pred.resolution_note, bad=True))
    figures = FigureWriter(view.path, log)
    cal = calibration(pred.probs, pred.labels) if pred is not None else None
    unused = inactive_fields(view.train)  # e.g. plateau settings of a run on a linear schedule
    context = {
        "run_name": view.path.name,
        "subtitle": f"{view.train.get('preset')} preset, {view.train.get('model')} model; {view.path.resolve()}; "
        f"report written {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "notes": notes,
        "results": headline(view, pred, None if cal is None else cal["ece"]),
        "settings": [(k, pages.fmt(v)) for k, v in flatten_config(view).items() if k not in unused],
        "curves": figures.draw(FIGURES["curves"], lambda: run_curves_figure(view.metrics)) if view.metrics else None,
        "epochs": epoch_rows(view.metrics),
        "per_class": per_class_context(view, pred, figures),
        "errors": errors_context(pred, figures) if pred is not None else None,
        "calibration": None if pred is None or cal is None else calibration_context(view, pred, cal, figures),
        "robustness": robustness_context(view, figures),
    }
    out = view.path / REPORT
    log(f"writing {out}")
    pages.write_page(out, pages.render("report.html", **context))
    figures.remove_stale()
    return out
