"""A sweep's leaderboard: one row per variant, ranked by final validation accuracy (the accuracy of
the very model whose test accuracy is shown; test accuracy is never used to rank).

A row's numbers are read from the variant's run folder once, when its trial ends, and stored with
the trial in the study, so the leaderboard is rebuilt from the study's storage alone on any machine
(`rows_from_trials`); `run_result` reads the same numbers from a run folder, and the two agree.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cifarlab.common.files import atomic_write_json
from cifarlab.common.rundir import RunError
from cifarlab.experiments.runs import load_run
from cifarlab.experiments.spec import SweepSpec

LEADERBOARD = "leaderboard.html"
LEADERBOARD_JSON = "leaderboard.json"
FIGURES = {"ranking": "leaderboard-ranking.png", "curves": "leaderboard-curves.png"}
RESULT_KEYS = ("val_accuracy", "best_val_accuracy", "test_accuracy", "params", "epochs", "train_seconds", "over_budget")
STATES = {"COMPLETE": "finished", "FAIL": "failed", "RUNNING": "running", "WAITING": "pending", "PRUNED": "failed"}


def run_result(folder: Path) -> dict[str, Any]:
    """A run folder's status and numbers, as a leaderboard row holds them (and a trial stores them)."""
    empty: dict[str, Any] = {key: None for key in RESULT_KEYS} | {"over_budget": False}  # a folder knows no budget; the study does
    if not folder.is_dir():
        return {"status": "pending", "reason": None, **empty}
    try:
        view = load_run(folder)
    except RunError as e:
        return {"status": "failed", "reason": str(e), **empty}
    res = view.results or {}
    return {
        "status": view.status,
        "reason": view.reason,
        "val_accuracy": view.final_val_accuracy(),
        "best_val_accuracy": view.best_val_accuracy(),
        "test_accuracy": res.get("test_accuracy"),
        "params": res.get("params", view.config.get("params")),
        "epochs": len(view.metrics) or None,
        "train_seconds": view.train_seconds(),
        "over_budget": False,
    }


def _row(name: str, overrides: dict, run: str, result: dict) -> dict[str, Any]:
    return {"rank": None, "name": name, "overrides": overrides, **{k: result.get(k) for k in ("status", "reason", *RESULT_KEYS)}, "run": run}


def rank(rows: list[dict]) -> list[dict]:
    """Finished rows by final validation accuracy (ranks 1, 2, ...), those over a search's time
    budget after all the others, then the rest in their order."""
    ranked = sorted(
        (r for r in rows if r["status"] == "finished"),
        key=lambda r: (bool(r.get("over_budget")), -(r["val_accuracy"] if r["val_accuracy"] is not None else -1)),
    )
    for n, r in enumerate(ranked, 1):
        r["rank"] = n
    return ranked + [r for r in rows if r["status"] != "finished"]


def rows_from_folders(spec: SweepSpec, folder: Path, names: list[str], overrides: dict[str, dict]) -> list[dict]:
    """The leaderboard as the run folders tell it."""
    return rank([_row(n, overrides.get(n, {}), str(folder / n), run_result(folder / n)) for n in names])


def rows_from_trials(names: list[str], trials: dict[str, Any]) -> list[dict]:
    """The leaderboard as the study tells it: `trials` maps a variant's name to the trial that counts."""
    rows = []
    for name in names + [n for n in trials if n not in names]:
        trial = trials.get(name)
        attrs = trial.user_attrs if trial is not None else {}
        state = STATES.get(trial.state.name, "pending") if trial is not None else "pending"
        result = attrs.get("result") or {"status": state, "reason": attrs.get("reason")}
        if state in ("running", "pending"):  # a retry waiting, or a trial under way: what the study knows now
            result = {**result, "status": state}
        rows.append(_row(name, attrs.get("overrides", {}), attrs.get("run", ""), result))
    return rank(rows)


def format_leaderboard(rows: list[dict]) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    lines = [("rank", "variant", "val acc", "test acc", "epochs", "time", "status")]
    for r in rows:
        status = r["status"] + (f" ({r['reason']})" if r["reason"] and r["status"] != "finished" else "")
        status += ", over the time budget" if r.get("over_budget") else ""
        lines.append(
            (
                str(r["rank"] or "-"),
                r["name"],
                pct(r["val_accuracy"]),
                pct(r["test_accuracy"]),
                str(r["epochs"] or "-"),
                "-" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}s",
                status,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def write_leaderboard(spec: SweepSpec, folder: Path, rows: list[dict]) -> list[dict]:
    """leaderboard.json, leaderboard.html (a Jinja2 template, escaped) and its PNGs in the sweep folder.
    The curves need the run folders; where this machine cannot reach them, the page goes without."""
    from cifarlab.experiments import (
        pages,  # matplotlib only here: the rest stays importable without it
    )
    from cifarlab.experiments.figures import curves_figure

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / LEADERBOARD_JSON, rows)
    keys = list(dict.fromkeys(k for r in rows for k in r["overrides"]))
    finished = [r for r in rows if r["rank"] is not None]
    images: list[tuple[str, str, str | None]] = []  # (data URI, alt text, heading)
    if finished:
        ranking = pages.save_png(_ranking_figure(finished), folder / FIGURES["ranking"])
        images.append((pages.data_uri(ranking), "validation accuracy per variant", None))
        reachable = [r for r in finished if Path(r["run"]).is_dir()]
        if reachable:
            views = [load_run(r["run"]) for r in reachable]
            curves = pages.save_png(curves_figure(views, [r["name"] for r in reachable]), folder / FIGURES["curves"])
            images.append((pages.data_uri(curves), "training curves of the finished variants", "Curves"))
    table = [
        [
            pages.fmt(r["rank"]),
            r["name"],
            *(pages.fmt(r["overrides"].get(k)) for k in keys),
            pages.fmt(r["val_accuracy"], "pct"),
            pages.fmt(r["best_val_accuracy"], "pct"),
            pages.fmt(r["test_accuracy"], "pct"),
            pages.fmt(r["params"], "int"),
            pages.fmt(r["epochs"]),
            pages.fmt(r["train_seconds"], "s"),
            _status(r),
        ]
        for r in rows
    ]
    header = ["rank", "variant", *keys, "val acc (final, ranks)", "best val acc", "test acc", "params", "epochs", "train time", "status"]
    fixed = ", ".join(f"{k} = {pages.fmt(v)}" for k, v in spec.fixed.items()) or "none"
    subset = f"; first {spec.train_subset:,} training images" if spec.train_subset else ""
    subtitle = f"{spec.path.name}: {spec.describe(len(rows))}; fixed: {fixed}{subset}; written {time.strftime('%Y-%m-%d %H:%M:%S')}"
    html = pages.render(
        "leaderboard.html",
        title=f"Sweep {spec.path.stem}",
        subtitle=subtitle,
        header=header,
        rows=table,
        row_classes=["failed" if r["status"] == "failed" else "" for r in rows],
        num_from=2,
        images=images,
    )
    pages.write_page(folder / LEADERBOARD, html)
    return rows


def _status(row: dict) -> str:
    if row.get("over_budget"):
        return row["status"] + ", over the time budget"
    return row["status"] + (f": {row['reason']}" if row["reason"] and row["status"] != "finished" else "")


def _ranking_figure(rows: list[dict]):
    from cifarlab.experiments import pages

    fig = pages.new_figure(8, 0.8 + 0.32 * len(rows))
    ax = fig.subplots()
    y = list(range(len(rows)))[::-1]
    val = [100 * (r["val_accuracy"] or 0) for r in rows]
    test = [100 * (r["test_accuracy"] or 0) for r in rows]
    ax.barh([i + 0.2 for i in y], val, height=0.4, label="validation (ranks)", color="tab:blue")
    ax.barh([i - 0.2 for i in y], test, height=0.4, label="test (shown only)", color="tab:gray")
    ax.set_yticks(y, [pages.plain(r["name"]) for r in rows], fontsize=8)
    ax.set_xlabel("accuracy (%)")
    ax.set_title("Variants ranked by final validation accuracy")
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    ax.grid(axis="x", alpha=0.3)
    return fig


def listing(head: str, rows: list[tuple[str, str, str]], tail: str) -> str:
    """`--list`: a head line, a line per (name, state, values), a tail line."""
    name_width = max((len(name) for name, _, _ in rows), default=0)
    state_width = max((len(state) for _, state, _ in rows), default=0)
    lines = [f"  {name:<{name_width}}  {state:<{state_width}}  {values}".rstrip() for name, state, values in rows]
    return "\n".join([head, *lines, tail])
