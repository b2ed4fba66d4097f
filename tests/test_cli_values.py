"""Bad values on the command line: one line naming the value, before any work, nothing left behind."""

import json
import os
import shutil

import pytest

from cifarlab.cli import main


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cifarlab "), err
    return err


@pytest.mark.parametrize(
    "device, message",
    [
        ("foo", "'foo': not a device"),
        ("", "'': not a device"),
        ("mps", "runs on cpu or cuda, not mps"),
        ("cuda:7", "CUDA"),
    ],
)
def test_bad_device_is_one_line(tiny_run, capsys, tmp_path, device, message):
    err = one_line_error(capsys, ["evaluate", str(tiny_run), "--device", device, "--output", str(tmp_path / "e.json")])
    assert message in err and not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("subset", ["0", "-5"])
def test_train_subset_must_be_positive(tiny_binary, capsys, tmp_path, subset):
    err = one_line_error(
        capsys,
        ["train", "--preset", "fast", "--train-subset", subset, "--data-dir", str(tiny_binary), "--out", str(tmp_path / "run"), "--device", "cpu"],
    )
    assert f"--train-subset {subset}" in err and not (tmp_path / "run").exists()


def test_config_errors_say_what_is_allowed(capsys, tmp_path):
    err = one_line_error(capsys, ["train", "--epochs", "0", "--out", str(tmp_path / "r"), "--data-dir", str(tmp_path)])
    assert "bad value for epochs: 0 (allowed: 1 to 100,000)" in err


def test_evaluate_batch_size_and_output_checked_before_work(tiny_run, capsys, tmp_path):
    assert "--batch-size 0" in one_line_error(capsys, ["evaluate", str(tiny_run), "--batch-size", "0", "--device", "cpu"])
    err = one_line_error(capsys, ["evaluate", str(tiny_run), "--output", str(tmp_path / "missing" / "e.json"), "--device", "cpu"])
    assert "no such folder" in err and not (tmp_path / "missing").exists()
    assert "is a folder" in one_line_error(capsys, ["evaluate", str(tiny_run), "--output", str(tmp_path), "--device", "cpu"])


def test_evaluate_takes_several_runs(tiny_run, tmp_path, capsys):
    """The README's `cifarlab evaluate runs/fast-*/` works with two runs."""
    other = tmp_path / "copy"
    shutil.copytree(tiny_run, other)
    assert main(["evaluate", str(tiny_run), str(other), "--data-dir", str(tiny_run.parent / "data"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("test accuracy") == 2 and str(other) in out
    assert json.loads((other / "evaluation.json").read_text())["test_images"] == 40
    assert "names one file" in one_line_error(capsys, ["evaluate", str(tiny_run), str(other), "--output", str(tmp_path / "e.json")])


def test_failed_compare_leaves_nothing_and_out_must_be_a_folder(tiny_run, tmp_path, capsys):
    out = tmp_path / "cmp"
    one_line_error(capsys, ["compare", str(tiny_run), str(tmp_path / "not-a-run"), "--out", str(out)])
    assert not out.exists()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert "is a file" in one_line_error(capsys, ["compare", str(tiny_run), "--out", str(a_file)])


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="non-UTF-8 file names need a byte-oriented file system")
def test_predict_non_utf8_file_names_in_csv(tiny_run, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / name)
    out = tmp_path / "p.csv"
    assert main(["predict", str(tiny_run), str(folder), "--output", str(out), "--quiet"]) == 0
    assert b"caf\xe9.png" in out.read_bytes()  # the name as the file system holds it
    assert main(["predict", str(tiny_run), str(folder), "--output", str(tmp_path / "p.json"), "--quiet"]) == 0
    capsys.readouterr()
    import csv

    import torch

    (row,) = csv.DictReader(out.read_bytes().decode("utf-8", "surrogateescape").splitlines())
    report = json.loads((tmp_path / "p.json").read_text())
    (prediction,) = report["predictions"]
    assert (report["files"], report["errors"], prediction["path"]) == (1, 0, str(folder / name))  # surrogates kept
    probs = torch.softmax(torch.tensor(prediction["logits"], dtype=torch.float64), 0)
    assert prediction["top1_prob"] == pytest.approx(float(probs.max()), abs=1e-6)  # the probability of its logits
    assert prediction["top1"] == row["top1"] and float(row["top1_prob"]) == pytest.approx(prediction["top1_prob"], abs=1e-6)
    ranked = [p["prob"] for p in prediction["top_k"]]
    assert ranked == sorted(ranked, reverse=True) and sum(ranked) <= 1 + 1e-9 and prediction["top_k"][0]["class"] == row["top1"]


def test_export_checks_on_the_runs_own_data(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "nowhere"))  # the default location has no data
    out = tmp_path / "m.onnx"
    assert main(["export", str(tiny_run), "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CIFAR-10 test set" in text and "random" not in text


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_port_out_of_range_is_one_line(tiny_run, capsys, port):
    assert f"--port {port}: must be a port number" in one_line_error(capsys, ["serve", str(tiny_run), "--port", port])


def test_sweep_given_a_folder_is_one_line(tmp_path, capsys):
    assert "is a folder; name a TOML file" in one_line_error(capsys, ["sweep", str(tmp_path)])
