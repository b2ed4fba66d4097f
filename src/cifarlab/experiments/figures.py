"""Training-curve figures shared by the report, the comparison page and the sweep leaderboard, and
the report's robustness heat map.

Figures come from `pages.new_figure` (matplotlib's object API, headless); names drawn in them go
through `pages.plain` so matplotlib never reads a run's name as mathtext.
"""

from __future__ import annotations

import numpy as np

from cifarlab.experiments import pages
from cifarlab.experiments.runs import RunView


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
