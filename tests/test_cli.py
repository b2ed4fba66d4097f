import json
import subprocess
import sys

import pytest

from cifarlab.cli import main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "evaluate", "info"):
        assert cmd in out


def test_evaluate_prints_table_and_writes_json(tiny_run, tmp_path, capsys):
    data = tiny_run.parent / "data"
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(tiny_run), "--data-dir", str(data), "--device", "cpu", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "airplane" in text and "confusion matrix" in text
    result = json.loads(out.read_text())
    assert set(result["per_class_accuracy"]) >= {"airplane", "truck"}
    assert len(result["confusion_matrix"]) == 10 and sum(map(sum, result["confusion_matrix"])) == 40
    assert result["test_error"] == pytest.approx(1 - result["test_accuracy"])


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no checkpoint there" in err
    assert main(["train", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--lr", "-1"]) == 1
    assert "bad value for lr" in capsys.readouterr().err


def test_info_reports_data_and_models(tiny_binary, capsys):
    assert main(["info", "--data-dir", str(tiny_binary)]) == 0
    out = capsys.readouterr().out
    assert "paper" in out and "1,780,650" in out and "ok, 100 training" in out


@pytest.mark.slow
def test_end_to_end_on_real_data_subset(real_data, tmp_path):
    """A real run through the installed command: train 1 epoch on 2,000 real images, then evaluate."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cifarlab", "train", "--preset", "paper", "--epochs", "1", "--train-subset", "2000",
           "--val-size", "500", "--momentum", "0.9", "--data-dir", str(real_data), "--out", str(run), "--device", "cpu", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["test_accuracy"] > 0.15  # above chance (10%) after one short epoch
    done = subprocess.run([sys.executable, "-m", "cifarlab", "evaluate", str(run), "--data-dir", str(real_data), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "test accuracy" in done.stdout
