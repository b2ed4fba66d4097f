"""Calibration: NLL, Brier score and ECE by hand, temperature fitting, and `cifarlab calibrate` with
what reads its calibration.json: predict and serve --calibrated, evaluate and the report."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from cifarlab.cli import main
from cifarlab.common.files import RunError
from cifarlab.common.metrics import brier, calibration_scores, ece, fit_temperature, nll
from cifarlab.common.rundir import CALIBRATION
from cifarlab.data import load_cifar10, split_train_val
from cifarlab.inference.model import Predictor
from cifarlab.inference.predict import load_image

# ---------------------------------------------------------------- metrics by hand


def test_perfect_and_uniform_predictions():
    labels = torch.arange(10)
    perfect = 50.0 * torch.eye(10)  # softmax puts 1 - 9e-22 on the true class
    assert nll(perfect, labels) == pytest.approx(0.0, abs=1e-12)
    assert brier(perfect, labels) == pytest.approx(0.0, abs=1e-12)
    assert ece(perfect, labels) == pytest.approx(0.0, abs=1e-12)
    uniform = torch.zeros(10, 10)
    assert nll(uniform, labels) == pytest.approx(math.log(10))
    assert brier(uniform, labels) == pytest.approx(0.9)  # 0.9^2 + 9 * 0.1^2
    # every image at confidence 0.1 predicting class 0 (the first of the ties): 1 of 10 right, ECE 0
    assert ece(uniform, labels) == pytest.approx(0.0, abs=1e-12)
    assert ece(uniform, torch.zeros(10, dtype=torch.long)) == pytest.approx(0.9)  # all right at confidence 0.1


def test_two_class_example_by_hand():
    logits = torch.tensor([[math.log(4.0), 0.0], [0.0, math.log(4.0)]])  # p = (0.8, 0.2) and (0.2, 0.8)
    labels = torch.tensor([0, 0])  # one right, one wrong, both at confidence 0.8
    assert nll(logits, labels) == pytest.approx(-(math.log(0.8) + math.log(0.2)) / 2)
    assert brier(logits, labels) == pytest.approx((0.08 + 1.28) / 2)  # 2 * 0.2^2 and 2 * 0.8^2
    assert ece(logits, labels) == pytest.approx(0.3)  # one bin: |0.5 - 0.8|
    scores = calibration_scores(logits, labels, temperature=2.0)
    assert scores["nll"] == pytest.approx(nll(logits / 2, labels))


def test_fit_temperature_recovers_a_known_temperature():
    generator = torch.Generator().manual_seed(0)
    true_logits = 2.0 * torch.randn(20_000, 10, generator=generator)
    labels = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=generator).flatten()
    assert fit_temperature(3.0 * true_logits, labels) == pytest.approx(3.0, rel=0.03)  # overconfident by 3
    assert fit_temperature(0.5 * true_logits, labels) == pytest.approx(0.5, rel=0.03)  # underconfident
    assert fit_temperature(3.0 * true_logits, labels) == fit_temperature(3.0 * true_logits, labels)  # deterministic


# ---------------------------------------------------------------- `cifarlab calibrate` on a trained run


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def calibrated(tiny_run, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the tiny run after `cifarlab calibrate` (which finds the run's own data), and its output."""
    run = tmp_path_factory.mktemp("calibrated") / "run"
    shutil.copytree(tiny_run, run)
    code, out, err = run_cli(["calibrate", str(run), "--device", "cpu"])
    assert code == 0, err
    return run, out


@pytest.fixture(scope="module")
def pngs(tiny_run, tmp_path_factory) -> Path:
    """Five test images as PNG files in a folder."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("pngs")
    for i, image in enumerate(load_cifar10(tiny_run.parent / "data", download=False).test_images[:5]):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return folder


def test_calibrate_fits_on_the_validation_split(calibrated, tiny_run):
    run, out = calibrated
    stored = json.loads((run / CALIBRATION).read_text())
    config = json.loads((run / "config.json").read_text())
    assert stored["fitted_on"] == f"validation split ({config['val_images']} images)"
    assert stored["epoch"] == config["train"]["epochs"] and stored["temperature"] > 0
    assert stored["val_nll_after"] <= stored["val_nll_before"] + 1e-12
    # the same split training held out, and the NLL it lowered is that split's
    data = load_cifar10(tiny_run.parent / "data", download=False)
    _, val_idx = split_train_val(data.train_labels, config["train"]["val_size"])
    logits = Predictor(run).logits(data.train_images[val_idx])
    assert nll(logits, data.train_labels[val_idx]) == pytest.approx(stored["val_nll_before"])
    assert nll(logits / stored["temperature"], data.train_labels[val_idx]) == pytest.approx(stored["val_nll_after"])
    assert "validation NLL" in out and "after temperature scaling" in out and f"written to {run / CALIBRATION}" in out


def predictions(run: Path, folder: Path, tmp_path: Path, *flags: str) -> list[dict]:
    output = tmp_path / f"predictions{len(flags)}.json"
    code, _, err = run_cli(["predict", str(run), str(folder), "--top-k", "10", "--quiet", "--output", str(output), *flags])
    assert code == 0, err
    return json.loads(output.read_text())["predictions"]


def test_predict_calibrated_divides_logits_by_the_temperature(calibrated, pngs, tmp_path):
    run, _ = calibrated
    temperature = json.loads((run / CALIBRATION).read_text())["temperature"]
    plain = predictions(run, pngs, tmp_path)
    scaled = predictions(run, pngs, tmp_path, "--calibrated")
    classes = Predictor(run).classes
    for a, b in zip(plain, scaled):
        assert a["logits"] == b["logits"] and a["top1"] == b["top1"]  # T never changes the ranking
        expected = torch.softmax(torch.tensor(b["logits"]) / temperature, 0)
        for entry in b["top_k"]:
            assert entry["prob"] == pytest.approx(expected[classes.index(entry["class"])].item(), abs=1e-6)
    assert max(abs(a["top1_prob"] - b["top1_prob"]) for a, b in zip(plain, scaled)) > 1e-4


def test_serve_calibrated_answers_with_scaled_probabilities(calibrated, pngs):
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from cifarlab.serve import create_app

    run, _ = calibrated
    temperature = json.loads((run / CALIBRATION).read_text())["temperature"]
    predictor = Predictor(run)
    data = (pngs / "0.png").read_bytes()
    expected = torch.softmax(predictor.logits(load_image(data).pixels[None])[0] / temperature, 0)
    with TestClient(create_app(run, calibrated=True)) as client:
        assert client.get("/health").json()["temperature"] == temperature
        answer = client.post("/predict", params={"top_k": 10}, files={"file": ("0.png", data, "image/png")}).json()
    for entry in answer["top_k"]:
        assert entry["prob"] == pytest.approx(expected[predictor.classes.index(entry["class"])].item(), abs=1e-6)


def test_evaluate_reports_calibration_before_and_after(calibrated, tiny_run, tmp_path):
    run, _ = calibrated
    output = tmp_path / "evaluation.json"
    code, out, err = run_cli(["evaluate", str(run), "--data-dir", str(tiny_run.parent / "data"), "--device", "cpu", "--output", str(output)])
    assert code == 0, err
    result = json.loads(output.read_text())
    assert result["test_nll"] == pytest.approx(result["test_loss"])
    assert 0 <= result["test_brier"] <= 2 and 0 <= result["test_ece"] <= 1
    scaled = result["temperature_scaled"]
    assert scaled["temperature"] == json.loads((run / CALIBRATION).read_text())["temperature"]
    assert set(scaled) == {"temperature", "nll", "brier", "ece"}
    assert "ECE" in out and "Brier" in out and "after temperature scaling" in out


def test_report_shows_the_diagram_after_scaling(calibrated, tiny_run):
    from cifarlab.experiments.report import CALIBRATED_FIGURE, build_report

    run, _ = calibrated
    page = build_report(run, tiny_run.parent / "data", device="cpu", log=lambda s: None, progress=False)
    html = page.read_text()
    assert (run / CALIBRATED_FIGURE).read_bytes()[:4] == b"\x89PNG"
    assert "after temperature scaling (T = " in html and "Brier" in html and "NLL" in html
    (run / CALIBRATION).rename(run / "calibration.kept")  # uncalibrated again: the second diagram goes
    try:
        html = build_report(run, tiny_run.parent / "data", device="cpu", log=lambda s: None, progress=False).read_text()
    finally:
        (run / "calibration.kept").rename(run / CALIBRATION)
    assert not (run / CALIBRATED_FIGURE).exists() and "cifarlab calibrate" in html and "Brier" in html


# ---------------------------------------------------------------- what cannot be calibrated


def one_line_error(argv: list[str]) -> str:
    code, _, err = run_cli(argv)
    assert code == 1 and err.count("\n") == 1, err
    return err


def test_calibrated_without_calibration_is_a_one_line_error(tiny_run, pngs):
    err = one_line_error(["predict", str(tiny_run), str(pngs), "--calibrated", "--quiet"])
    assert f"no {CALIBRATION}" in err and f"cifarlab calibrate {tiny_run}" in err
    with pytest.raises(RunError, match="cifarlab calibrate"):
        Predictor(tiny_run, calibrated=True)


def test_a_temperature_of_another_epoch_is_refused(calibrated, tmp_path, pngs):
    run = tmp_path / "run"
    shutil.copytree(calibrated[0], run)
    stored = json.loads((run / CALIBRATION).read_text())
    (run / CALIBRATION).write_text(json.dumps({**stored, "epoch": stored["epoch"] - 1}))
    err = one_line_error(["predict", str(run), str(pngs), "--calibrated", "--quiet"])
    assert f"fitted on the epoch-{stored['epoch'] - 1} checkpoint" in err
    for temperature in (0, 1e-300, 1e300):  # 1e-300 passed a "positive, finite" check and printed nan%
        (run / CALIBRATION).write_text(json.dumps({**stored, "temperature": temperature}))
        err = one_line_error(["predict", str(run), str(pngs), "--calibrated"])
        assert f"temperature should be between 0.05 and 20 (the range calibrate searches), found {temperature}" in err


def test_a_run_without_validation_split_cannot_be_calibrated(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    config["train"]["val_size"] = 0
    (run / "config.json").write_text(json.dumps(config))
    err = one_line_error(["calibrate", str(run), "--device", "cpu"])
    assert "val_size 0" in err and "test set is never used" in err
    assert not (run / CALIBRATION).exists()


def test_evaluate_corruptions_and_report_read_the_runs_own_data(tiny_run, tmp_path, monkeypatch):
    """Without --data-dir, a run is measured on the data set it trained on (config.json records
    it), as calibrate and export do, not on whatever CIFARLAB_DATA points at."""
    from cifarlab.experiments.predictions import checkpoint_predictions
    from cifarlab.experiments.runs import load_run
    from conftest import write_binary

    other = write_binary(tmp_path / "other", per_batch=20, test=20).parent  # 20 test images; the run's data has 40
    monkeypatch.setenv("CIFARLAB_DATA", str(other))
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    code, _, err = run_cli(["evaluate", str(run), "--device", "cpu", "--tta", "0"])
    assert code == 0, err
    assert json.loads((run / "evaluation.json").read_text())["test_images"] == 40
    code, _, err = run_cli(["evaluate", str(run), "--device", "cpu", "--tta", "0", "--corruptions", "--corruption-names", "brightness"])
    assert code == 0, err
    assert json.loads((run / "robustness.json").read_text())["clean"]["images"] == 40
    pred, missing = checkpoint_predictions(load_run(run), None, "cpu", lambda s: None, progress=False)
    assert missing == [] and len(pred.labels) == 40
