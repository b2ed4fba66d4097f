"""Training-curve figures shared by the report, the comparison page and the sweep leaderboard, and
the report's own: per-class accuracy, confusion matrix, wrong images, reliability diagram and
robustness heat map.

Figures come from `pages.new_figure` (matplotlib's object API, headless); names drawn in them go
through `pages.plain` so matplotlib never reads a run's name as mathtext.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.lines import Line2D

from cifarlab.experiments import pages
from cifarlab.experiments.runs import RunView

if TYPE_CHECKING:  # only a type here: the comparison page and leaderboard need no model loading
    from cifarlab.experiments.predictions import Predictions


def run_curves_figure(metrics: list[dict]):
    fig = pages.new_figure(12, 3.6)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    epochs = [m["epoch"] for m in metrics]
    style = dict(marker="o", markersize=3)
    for key, label, ax in (
        ("train_loss", "train", ax_loss),
        ("val_loss", "validation", ax_loss),
        ("train_accuracy", "train", ax_acc),
        ("val_accuracy", "validation", ax_acc),
    ):
        points = [(e, m.get(key)) for e, m in zip(epochs, metrics) if m.get(key) is not None]
        if points:
            x, y = zip(*points)
            ax.plot(x, [100 * v for v in y] if "accuracy" in key else y, label=label, **style)
    ax_lr.plot(epochs, [m["lr"] for m in metrics], color="tab:green", **style)
    lrs = [m["lr"] for m in metrics if m["lr"] > 0]
    if lrs and max(lrs) / min(lrs) > 10:
        ax_lr.set_yscale("log")
    else:
        ax_lr.ticklabel_format(axis="y", useOffset=False)
    for ax, title, ylabel in ((ax_loss, "Loss", "cross-entropy"), (ax_acc, "Accuracy", "%"), (ax_lr, "Learning rate", "lr")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.legend()
    ax_acc.legend()
    return fig


def run_colours(count: int) -> list[str]:
    """One colour per run, the same on every panel of a figure (matplotlib's cycle, repeating after 10)."""
    return [f"C{n % 10}" for n in range(count)]


def run_legend(fig, labels: list[str], colours: list[str]) -> None:
    """One legend naming every run above all the panels, so that no run's curve (or lone point, for a
    one-epoch run) goes unnamed, whichever panels it has figures in."""
    handles = [Line2D([], [], color=c, marker="o", markersize=4, label=pages.plain(label)) for label, c in zip(labels, colours)]
    fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 4), fontsize=8)


def curves_figure(views: list[RunView], labels: list[str]):
    """Train/validation loss and accuracy per epoch, one colour per run, every run named in the legend."""
    fig = pages.new_figure(12, 7.5 + 0.25 * (len(views) // 4))
    axes = fig.subplots(2, 2)
    colours = run_colours(len(views))
    panels = (
        ("train_loss", "Training loss"),
        ("val_loss", "Validation loss"),
        ("train_accuracy", "Training accuracy (%)"),
        ("val_accuracy", "Validation accuracy (%)"),
    )
    for ax, (key, title) in zip(axes.ravel(), panels):
        for view, label, colour in zip(views, labels, colours):
            points = [(m["epoch"], m.get(key)) for m in view.metrics if m.get(key) is not None]
            if points:
                x, y = zip(*points)
                ax.plot(x, [100 * v for v in y] if "accuracy" in key else y, marker="o", markersize=3, color=colour, label=pages.plain(label))
        if not ax.lines:  # e.g. validation panels when no run kept a validation split
            ax.text(0.5, 0.5, "no run has these figures", transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    run_legend(fig, labels, colours)
    return fig


def lr_time_figure(views: list[RunView], labels: list[str]):
    """Learning rate per epoch, and accuracy against wall-clock training time: validation accuracy,
    or training accuracy (dashed) for a run without a validation split."""
    fig = pages.new_figure(12, 4.2 + 0.25 * (len(views) // 4))
    ax_lr, ax_time = fig.subplots(1, 2)
    colours = run_colours(len(views))
    for view, label, colour in zip(views, labels, colours):
        if not view.metrics:
            continue
        epochs, lrs = [m["epoch"] for m in view.metrics], [m["lr"] for m in view.metrics]
        ax_lr.plot(epochs, lrs, marker="o", markersize=3, color=colour, label=pages.plain(label))
        key = "val_accuracy" if any(m.get("val_accuracy") is not None for m in view.metrics) else "train_accuracy"
        points = [(m["elapsed_seconds"], 100 * m[key]) for m in view.metrics if m.get(key) is not None]
        if points:
            ax_time.plot(
                *zip(*points),
                marker="o",
                markersize=3,
                color=colour,
                linestyle="-" if key == "val_accuracy" else "--",
                label=pages.plain(label + ("" if key == "val_accuracy" else " (training)")),
            )
    ax_lr.set_title("Learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.ticklabel_format(axis="y", useOffset=False)
    ax_lr.xaxis.get_major_locator().set_params(integer=True)
    ax_time.set_title("Validation accuracy (%) against training time\n(dashed: training accuracy, for a run without a validation split)", fontsize=10)
    ax_time.set_xlabel("seconds")
    for ax in (ax_lr, ax_time):
        ax.grid(alpha=0.3)
    run_legend(fig, labels, colours)
    return fig


def robustness_figure(corruptions: dict, clean_accuracy: float):
    """Heat map of accuracy by corruption (rows) and severity (columns), from robustness.json."""
    names = list(corruptions["accuracy"])
    values = 100 * np.array([corruptions["accuracy"][n] for n in names], dtype=float)
    fig = pages.new_figure(7, 1.6 + 0.36 * len(names))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    for (row, col), value in np.ndenumerate(values):
        ax.text(col, row, f"{value:.1f}", ha="center", va="center", fontsize=8, color="white" if value < 55 else "black")
    severities = range(1, values.shape[1] + 1)
    ax.set_xticks(range(values.shape[1]), [str(s) for s in severities])
    ax.set_yticks(range(len(names)), [pages.plain(n) for n in names])  # names of a user's files: no mathtext
    ax.set_xlabel("severity")
    ax.set_title(f"Accuracy under corruptions: mean {100 * corruptions['mean_accuracy']:.2f}% (clean {100 * clean_accuracy:.2f}%)", fontsize=10)
    return fig


def per_class_figure(classes: list[str], accuracy: list[float]):
    fig = pages.new_figure(6, 3.8)
    ax = fig.subplots()
    y = np.arange(len(classes))[::-1]
    bars = ax.barh(y, [100 * a for a in accuracy], color="tab:blue")
    ax.bar_label(bars, labels=[f"{100 * a:.1f}%" for a in accuracy], padding=3, fontsize=8)
    ax.set_yticks(y, [pages.plain(c) for c in classes])  # names from the data's meta file: no mathtext
    ax.set_xlim(0, 110)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title("Per-class accuracy")
    ax.grid(axis="x", alpha=0.3)
    return fig


def confusion_figure(confusion: np.ndarray, classes: list[str]):
    fig = pages.new_figure(7.5, 6.5)
    ax = fig.subplots()
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="test images")
    threshold = confusion.max() / 2 if confusion.size else 0
    for (t, p), count in np.ndenumerate(confusion):
        ax.text(p, t, str(count), ha="center", va="center", fontsize=8, color="white" if count > threshold else "black")
    ticks = np.arange(len(classes))
    names = [pages.plain(c) for c in classes]  # from the data's meta file: no mathtext
    ax.set_xticks(ticks, names, rotation=45, ha="right")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (test set)")
    return fig


def errors_figure(pred: Predictions, indices: np.ndarray):
    cols = 6
    rows = max(1, -(-len(indices) // cols))
    fig = pages.new_figure(1.8 * cols, 2.1 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, indices):
        ax.imshow(pred.images[i].transpose(1, 2, 0), interpolation="nearest")
        p = pred.preds[i]
        ax.set_title(
            pages.plain(f"true {pred.classes[pred.labels[i]]}\npred {pred.classes[p]} {100 * pred.probs[i, p]:.0f}%"),
            fontsize=8,
            color="darkred",
        )
    fig.suptitle("Most confidently wrong test images")
    return fig


def calibration_figure(cal: dict, heading: str = "Reliability diagram"):
    fig = pages.new_figure(6, 5.5)
    ax, ax_hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    edges, counts = cal["edges"], cal["counts"]
    width = edges[1] - edges[0]
    centers = edges[:-1] + width / 2
    filled = counts > 0
    ax.bar(centers[filled], cal["accuracy"][filled], width=width * 0.95, color="tab:blue", label="accuracy in bin")
    # the gap as a line from accuracy to a marker at mean confidence: drawn over the bars, it keeps
    # exactly the colour the legend shows (a translucent bar over the blue one did not)
    ax.vlines(centers[filled], cal["accuracy"][filled], cal["confidence"][filled], color="tab:red", linewidth=2)
    ax.plot(centers[filled], cal["confidence"][filled], "o", color="tab:red", markersize=5, label="mean confidence in bin")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{heading} ({len(counts)} bins), ECE = {100 * cal['ece']:.2f}%")
    ax.legend(loc="upper left", fontsize=8)
    ax_hist.bar(centers, counts, width=width * 0.95, color="gray")
    ax_hist.set_xlabel("confidence (top softmax probability)")
    ax_hist.set_ylabel("images")
    return fig
