"""`cifarlab report`, `runs` and `compare`: pages checked in a real headless Chromium, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cifarlab.experiments
from cifarlab.cli import main
from cifarlab.common.rundir import RunDir
from cifarlab.experiments.report import (
    FIGURES,
    REPORT,
    build_report,
    calibration,
    confused_pairs,
)
from cifarlab.experiments.runs import list_runs, load_run
from conftest import open_page

QUIET = dict(log=lambda s: None, progress=False, device="cpu")


def copy_run(tiny_run: Path, dest: Path) -> Path:
    shutil.copytree(tiny_run, dest)
    return dest


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def test_calibration_and_confused_pairs_by_hand():
    # four images at confidence 0.9 of which 3 are right: one bin, |0.75 - 0.9| = 0.15
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])
    labels = np.array([0, 0, 1, 1])
    cal = calibration(probs, labels)
    assert cal["counts"].sum() == 4 and cal["counts"][13] == 4  # 0.9 lies in (0.8667, 0.9333]
    assert cal["ece"] == pytest.approx(0.15)
    # two bins: 0.6 (1 right of 2) and 1.0 (2 right of 2): ECE = 0.5*0.1 + 0.5*0
    probs = np.array([[0.6, 0.4], [0.4, 0.6], [1.0, 0.0], [0.0, 1.0]])
    assert calibration(probs, np.array([0, 0, 0, 1]))["ece"] == pytest.approx(0.05)
    confusion = np.array([[5, 3, 0], [1, 6, 7], [0, 0, 9]])
    assert confused_pairs(confusion, ["a", "b", "c"]) == [("b", "c", 7, 0.5), ("a", "b", 3, 0.375), ("b", "a", 1, 1 / 14)]


def test_report_of_a_finished_run_in_a_browser(tiny_run, tmp_path, browser):
    run = copy_run(tiny_run, tmp_path / "run")
    before = snapshot(run)
    page = build_report(run, tiny_run.parent / "data", **QUIET)
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing of the run is touched
    assert set(after) - set(before) == {REPORT, *FIGURES.values()}
    for name in FIGURES.values():
        assert after[name][:8] == b"\x89PNG\r\n\x1a\n"

    shot = tmp_path / "report.png"
    seen = open_page(browser, page, shot)
    assert seen["errors"] == [] and seen["failed"] == []
    assert all(url.startswith("data:") for url in seen["requests"])  # nothing fetched: self-contained
    assert len(seen["widths"]) == len(FIGURES) and all(w > 0 for w in seen["widths"])
    results = json.loads((run / "results.json").read_text())
    text = seen["text"]
    assert f"test accuracy\t{pct(results['test_accuracy'])}" in text
    assert f"test error\t{pct(results['test_error'])}" in text
    assert f"parameters\t{results['params']:,}" in text
    for cls, acc in results["per_class_accuracy"].items():  # the same model and data: the same numbers
        assert f"{cls}\t{pct(acc)}" in text
    for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        assert pct(m["val_accuracy"]) in text
    assert "Expected calibration error" in text and "Most confused class pairs" in text
    assert "Partial" not in text and "Missing" not in text
    assert shot.stat().st_size > 10_000


def test_report_of_a_killed_run_is_partial(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed mid-write
    (run / "results.json").unlink()
    (run / "status.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 12345, "epoch": 1}))
    before = snapshot(run)
    assert main(["report", str(run), "--data-dir", str(tmp_path / "nodata"), "--device", "cpu", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(run / REPORT)
    assert {k: v for k, v in snapshot(run).items() if k in before} == before
    html = (run / REPORT).read_text()
    assert "metrics.jsonl ends in a line cut short" in html and "showing the 1 complete epochs" in html
    assert "the run is stopped" in html and "is gone" in html  # 'running' with a dead pid
    assert "Missing: test data not available" in html and "nodata" in html
    assert (run / FIGURES["curves"]).exists() and not (run / FIGURES["errors"]).exists()
    assert main(["runs", str(tmp_path), "--json"]) == 0
    assert [(r["name"], r["status"], r["epochs"]) for r in json.loads(capsys.readouterr().out)] == [("run", "stopped", 1)]

    (run / "checkpoint.pt").unlink()
    build_report(run, tiny_run.parent / "data", **QUIET)
    assert "Missing: no checkpoint.pt" in (run / REPORT).read_text()


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    for argv in (["report", str(tmp_path / "notarun")], ["compare", str(tmp_path / "notarun")], ["runs", str(tmp_path / "nope")]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(tmp_path) in err, err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"train": ')
    assert main(["report", str(tmp_path / "broken")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "broken/config.json: not valid JSON" in err


def test_runs_lists_status_and_sorts(tiny_run, tmp_path, capsys):
    root = tmp_path / "runs"
    copy_run(tiny_run, root / "a-finished")
    dead = copy_run(tiny_run, root / "b-dead")
    (dead / "results.json").unlink()
    (dead / "status.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 12345, "epoch": 2}))
    failed = copy_run(tiny_run, root / "c-failed")
    (failed / "results.json").unlink()
    (failed / "status.json").write_text(json.dumps({"status": "failed", "reason": "TrainingDiverged: nan", "epoch": 1}))
    alive = copy_run(tiny_run, root / "d-running")
    (alive / "results.json").unlink()
    (alive / "status.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 12345, "epoch": 2}))
    reused = copy_run(tiny_run, root / "e-reused-pid")  # killed; its PID now belongs to a live process (this one)
    (reused / "results.json").unlink()
    (reused / "status.json").write_text(json.dumps({"status": "running", "pid": os.getpid(), "epoch": 2}))
    with RunDir(alive).lock():  # as its training holds it, whatever pid status.json names
        assert main(["runs", str(root), "--json"]) == 0
        by_status = [r["name"] for r in list_runs(root, sort="status", reverse=True)]
    assert by_status == ["e-reused-pid", "b-dead", "d-running", "a-finished", "c-failed"]
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["status"]) for r in rows] == [
        ("a-finished", "finished"),
        ("b-dead", "stopped"),
        ("c-failed", "failed"),
        ("d-running", "running"),
        ("e-reused-pid", "stopped"),
    ]
    assert "is gone" in rows[4]["reason"]
    results = json.loads((tiny_run / "results.json").read_text())
    assert rows[0]["test_accuracy"] == results["test_accuracy"] and rows[0]["params"] == results["params"]
    assert rows[1]["test_accuracy"] is None and rows[1]["epochs"] == 2
    assert main(["runs", str(root), "--sort", "test_accuracy"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["name", "preset", "model"] and table[1].startswith("a-finished")
    assert pct(results["test_accuracy"]) in table[1] and "stopped" in table[2]


# Files that parse but have the wrong shape, or do not parse: (file, bytes, what the one-line error says)
DAMAGED = [
    ("status.json", b"[1]", "status.json: should hold a JSON object, found a list"),
    ("status.json", b'{"status": ["running"]}', "status.json: status should be text, found a list"),
    ("results.json", b"null", "results.json: should hold a JSON object, found null"),
    ("results.json", b'{"test_accuracy": "high"}', "results.json: test_accuracy should be a number, found text"),
    ("config.json", b"\xff\xfe{}", "config.json: not valid JSON (not UTF-8 text"),
    ("config.json", b'{"train": {"epochs": "2"}}', "config.json: train.epochs should be an integer, found text"),
    ("metrics.jsonl", b'[1]\n{"epoch": 2}\n', "metrics.jsonl: line 1 should be a JSON object, found a list"),
    ("metrics.jsonl", b'{"epoch": 1, "lr": 0.1}\n{}\n', "metrics.jsonl: line 1 lacks elapsed_seconds"),
]


@pytest.mark.parametrize("name, content, message", DAMAGED, ids=[f"{n}:{c[:12]!r}" for n, c, _ in DAMAGED])
def test_damaged_run_files_are_reported_per_run(tiny_run, tmp_path, capsys, name, content, message):
    root = tmp_path / "runs"
    copy_run(tiny_run, root / "good")
    bad = copy_run(tiny_run, root / "bad")
    (bad / name).write_bytes(content)
    before = snapshot(bad)
    assert main(["runs", str(root), "--json"]) == 0  # one bad run does not abort the listing
    out, err = capsys.readouterr()
    assert [r["name"] for r in json.loads(out)] == ["good"]
    assert err.count("\n") == 1 and message in err and str(bad) in err
    for argv in (["report", str(bad), "--quiet"], ["compare", str(root / "good"), str(bad), "--out", str(tmp_path / "cmp")]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    assert snapshot(bad) == before


def test_compare_page_in_a_browser(tiny_run, tmp_path, browser):
    first = copy_run(tiny_run, tmp_path / "runs" / "first")
    second = copy_run(tiny_run, tmp_path / "runs" / "second")
    config = json.loads((second / "config.json").read_text())
    config["train"]["lr"] = 0.05  # a second run that differs in one setting
    (second / "config.json").write_text(json.dumps(config))
    results = json.loads((second / "results.json").read_text())
    results["test_accuracy"] = 0.4321
    (second / "results.json").write_text(json.dumps(results))
    before = snapshot(first), snapshot(second)
    out = tmp_path / "cmp"
    assert main(["compare", str(first), str(second), "--out", str(out)]) == 0
    assert (snapshot(first), snapshot(second)) == before
    assert sorted(p.name for p in out.iterdir()) == ["compare-curves.png", "compare-lr-time.png", "compare.html"]

    seen = open_page(browser, out / "compare.html", tmp_path / "compare.png")
    assert seen["errors"] == [] and seen["failed"] == []
    assert len(seen["widths"]) == 2 and all(w > 0 for w in seen["widths"])
    assert "Settings that differ (highlighted): lr." in seen["text"]
    assert "lr\t0.01\t0.05" in seen["text"] and "43.21%" in seen["text"]
    assert pct(json.loads((first / "results.json").read_text())["test_accuracy"]) in seen["text"]
    html = (out / "compare.html").read_text()
    assert html.count('<tr class="differs">') == 1
    assert main(["compare", str(first), "--out", str(first)]) == 1  # never into a run directory


def test_without_matplotlib_report_is_a_one_line_error_and_train_still_works(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the core install: no plotting
    for name in ("pages", "report", "compare", "figures"):  # forget them, as in a fresh process
        monkeypatch.delitem(sys.modules, f"cifarlab.experiments.{name}", raising=False)
        monkeypatch.delattr(cifarlab.experiments, name, raising=False)
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'cifarlab[report]'" in err
    assert main(["train", "--out", str(tmp_path / "r"), "--lr", "-1"]) == 1  # user errors still one line
    assert "bad value for lr" in capsys.readouterr().err


def test_report_shows_only_the_settings_a_run_uses_and_explains_label_smoothing(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["train"].update(schedule="linear", label_smoothing=0.2)
    (run / "config.json").write_text(json.dumps(config))
    html = (build_report(run, tiny_run.parent / "data", **QUIET)).read_text()
    assert "warmup_fraction" in html and "plateau_patience" not in html and "plateau_factor" not in html
    assert "label smoothing 0.2" in html and "underconfidence" in html
    config["train"].update(schedule="plateau", label_smoothing=0.0)
    (run / "config.json").write_text(json.dumps(config))
    html = (build_report(run, tiny_run.parent / "data", **QUIET)).read_text()
    assert "plateau_patience" in html and "warmup_fraction" not in html and "label smoothing" not in html


def test_class_names_from_a_users_meta_file_are_drawn_as_text_not_mathtext():
    import io

    from cifarlab.experiments.figures import confusion_figure, errors_figure, per_class_figure
    from cifarlab.experiments.predictions import Predictions

    classes = ["$x^$", "a$b"]  # mathtext would fail on the first: "Expected end of text"
    pred = Predictions(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([1, 0]), np.zeros((2, 3, 2, 2), np.uint8), classes, 1, 0)
    for fig in (per_class_figure(classes, [0.5, 0.25]), confusion_figure(np.array([[1, 2], [3, 4]]), classes), errors_figure(pred, np.array([0, 1]))):
        fig.savefig(io.BytesIO(), format="png")


def test_compare_table_has_the_reports_metrics_and_the_machine(tiny_run):
    from cifarlab.experiments.compare import results_rows
    from cifarlab.experiments.runs import load_run
    from cifarlab.models.measure import describe_model

    view = load_run(tiny_run)
    rows = {row[0]: row[1] for row in results_rows([view])}
    expected = describe_model(view.train["model"], **view.train["model_options"])["gflops"]
    assert float(rows["forward GFLOPs per image"]) == pytest.approx(expected, abs=1e-3) and expected > 0
    results = json.loads((tiny_run / "results.json").read_text())
    assert rows["time to stabilise"].startswith(f"epoch {results['stabilised_epoch']}, ")
    assert rows["processor"] == results["processor"] and rows["training dtype"] == "bfloat16"


# ---------------------------------------------------------------- runs that have not finished


def stop(run: Path) -> Path:
    """The run as a killed training leaves it: no results.json, status 'running' with a dead pid."""
    (run / "results.json").unlink()
    (run / "status.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 12345, "epoch": 2}))
    return run


def test_compare_shows_the_test_accuracy_report_shows_for_a_stopped_run(tiny_run, tmp_path):
    from cifarlab.experiments.compare import compare_runs
    from cifarlab.experiments.predictions import checkpoint_predictions

    stopped = stop(copy_run(tiny_run, tmp_path / "stopped"))
    data = tiny_run.parent / "data"
    pred, _ = checkpoint_predictions(load_run(stopped), data, "cpu", lambda s: None, progress=False)
    shown = f"{pct(pred.accuracy)}"
    label = "checkpoint of epoch 2"
    report = build_report(stopped, data, **QUIET).read_text()
    assert f'<td>test accuracy ({label}, run not finished)</td><td class="num">{shown}</td>' in report
    page = compare_runs([tiny_run, stopped], tmp_path / "cmp", data, "cpu").read_text()
    results = json.loads((tiny_run / "results.json").read_text())
    assert (
        f'<td>test accuracy</td><td class="num">{pct(results["test_accuracy"])}</td><td class="num">{shown} ({label}, run not finished)</td>'
    ) in page
    page = compare_runs([stopped], tmp_path / "cmp2", tmp_path / "nodata", "cpu").read_text()
    assert "No test accuracy for stopped: test data not available" in page and '<td class="num">—</td>' in page


def test_a_low_resolution_checkpoint_is_measured_at_its_training_resolution_and_said_so(tmp_path):
    from cifarlab.experiments.compare import compare_runs
    from cifarlab.experiments.predictions import checkpoint_predictions
    from cifarlab.inference.model import Predictor
    from cifarlab.training.presets import get_preset
    from cifarlab.training.train import train
    from conftest import write_binary

    data = write_binary(tmp_path / "data", per_batch=40, test=40).parent
    config = get_preset("fast").replace(
        epochs=2, batch_size=64, val_size=20, low_res_epochs=1, mid_res_epochs=0, tta=0, model_options={"widths": [8, 16, 16], "stem_stride": 1}
    )

    def interrupt(record):  # killed after epoch 1, the low-resolution one, as a report mid-run sees it
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", data_dir=data, device="cpu", progress=False, log=lambda s: None, on_epoch=interrupt)
    run = tmp_path / "run"
    pred, _ = checkpoint_predictions(load_run(run), data, "cpu", lambda s: None, progress=False)
    model = Predictor(run / "checkpoint.pt")
    images = torch.from_numpy(pred.images)
    full = torch.softmax(model.logits(images), 1).numpy()
    model.model.set_stem_stride(2)
    assert pred.epoch == 1 and pred.stem_stride == 2
    np.testing.assert_allclose(pred.probs, torch.softmax(model.logits(images), 1).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(pred.probs, full)  # the full-resolution figures, which the page does not show, differ
    report = build_report(run, data, **QUIET).read_text()
    assert "trained with the stem at stride 2" in report and "not comparable with a finished run" in report
    assert "test accuracy (checkpoint of epoch 1, at its stem stride 2: not comparable, run not finished)" in report
    page = compare_runs([run], tmp_path / "cmp", data, "cpu").read_text()
    assert f"{pct(pred.accuracy)} (checkpoint of epoch 1, at its stem stride 2: not comparable, run not finished)" in page


def test_report_says_what_it_is_doing_while_it_works(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run")
    assert main(["report", str(run), "--data-dir", str(tiny_run.parent / "data"), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(run / REPORT)
    lines = err.splitlines()
    assert lines[0].startswith("predicting 40 test images with the epoch-2 checkpoint")
    assert [line for line in lines if line.startswith("drawing ")] == [f"drawing {name}" for name in FIGURES.values()]
    assert lines[-1] == f"writing {run / REPORT}"
