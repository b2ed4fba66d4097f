"""`cifarlab export`: ONNX and TorchScript round trips, the check that refuses a bad export."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cifarlab.cli import main
from cifarlab.data import load_cifar10
from cifarlab.inference import export as export_module
from cifarlab.inference.model import Predictor


@pytest.fixture(scope="module")
def test_images(tiny_run) -> torch.Tensor:
    return load_cifar10(tiny_run.parent / "data", download=False).test_images


def preprocess(images: torch.Tensor, info: dict) -> np.ndarray:
    """Exactly what the sidecar JSON tells a user to do, written independently of cifarlab."""
    pre = info["preprocessing"]
    mean = np.array(pre["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(pre["std"], dtype=np.float32).reshape(1, 3, 1, 1)
    return ((images.numpy().astype(np.float32) / 255 - mean) / std).astype(np.float32)


def test_onnx_export_round_trip(tiny_run, test_images, tmp_path, capsys):
    out = tmp_path / "net.onnx"
    assert main(["export", str(tiny_run), "--format", "onnx", "--output", str(out),
                 "--data-dir", str(tiny_run.parent / "data")]) == 0
    text = capsys.readouterr().out
    assert "max |logit difference|" in text and "warning" not in text
    info = json.loads((tmp_path / "net.onnx.json").read_text())
    assert info["input"] == {"name": "images", "shape": ["N", 3, 32, 32], "dtype": "float32", "layout": "NCHW",
                             "channel_order": "RGB", "batch_axis": "dynamic"}
    assert info["classes"][0] == "airplane" and len(info["classes"]) == 10
    check = info["check"]
    assert check["images"].startswith("CIFAR-10 test set") and check["count"] == 40
    assert check["max_abs_diff"] <= check["tolerance"] == 1e-4 and check["batch_sizes"] == [40, 7, 1]

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    reference = Predictor(tiny_run).logits(test_images).numpy()
    for n in (1, 5, 40):  # any batch size
        logits = session.run(["logits"], {"images": preprocess(test_images[:n], info)})[0]
        assert logits.shape == (n, 10)
        assert np.abs(logits - reference[:n]).max() < 1e-4
        assert (logits.argmax(1) == reference[:n].argmax(1)).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_round_trip(tiny_run, test_images, tmp_path, capsys):
    out = tmp_path / "net.pt"
    assert main(["export", str(tiny_run), "--format", "torchscript", "--output", str(out),
                 "--data-dir", str(tiny_run.parent / "data")]) == 0
    info = json.loads((tmp_path / "net.pt.json").read_text())
    loaded = torch.jit.load(str(out))
    reference = Predictor(tiny_run).logits(test_images)
    with torch.no_grad():
        logits = loaded(torch.from_numpy(preprocess(test_images[:9], info)))
    assert torch.allclose(logits, reference[:9], rtol=0, atol=1e-4)


def test_export_without_data_checks_random_images_and_says_so(tiny_run, tmp_path, capsys):
    out = tmp_path / "net.onnx"
    assert main(["export", str(tiny_run), "--output", str(out), "--data-dir", str(tmp_path / "none"),
                 "--check-images", "16"]) == 0
    assert "warning: checking the export on 16 random images" in capsys.readouterr().out
    check = json.loads((tmp_path / "net.onnx.json").read_text())["check"]
    assert check["images"].startswith("random") and check["count"] == 16


def test_export_that_differs_from_pytorch_is_refused_and_not_written(tiny_run, tmp_path, monkeypatch, capsys):
    real_export = export_module._export_onnx

    def off_by_a_little(model, example, path):
        run = real_export(model, example, path)
        return lambda x: run(x) + 1e-3  # what a wrong exporter or runtime would do

    monkeypatch.setattr(export_module, "_export_onnx", off_by_a_little)
    out = tmp_path / "net.onnx"
    assert main(["export", str(tiny_run), "--output", str(out), "--data-dir", str(tiny_run.parent / "data")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "differs from PyTorch by up to 0.001" in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []
