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
    assert main(["export", str(tiny_run), "--format", "onnx", "--output", str(out), "--data-dir", str(tiny_run.parent / "data")]) == 0
    text = capsys.readouterr().out
    assert "max |logit difference|" in text and "warning" not in text
    info = json.loads((tmp_path / "net.onnx.json").read_text())
    assert info["input"] == {
        "name": "images",
        "shape": ["N", 3, 32, 32],
        "dtype": "float32",
        "layout": "NCHW",
        "channel_order": "RGB",
        "batch_axis": "dynamic",
    }
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


def test_onnx_export_on_a_full_disk_is_a_one_line_error(tiny_run, tmp_path, capsys, monkeypatch):
    """The ONNX exporter writes its file itself: a full disk was an OSError traceback."""

    def full(model, x, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "_export_onnx", full)
    out = tmp_path / "net.onnx"
    assert main(["export", str(tiny_run), "--format", "onnx", "--output", str(out), "--data-dir", str(tiny_run.parent / "data")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{out}: cannot write it (No space left on device)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no model, no temporary


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_round_trip(tiny_run, test_images, tmp_path, capsys):
    out = tmp_path / "net.pt"
    assert main(["export", str(tiny_run), "--format", "torchscript", "--output", str(out), "--data-dir", str(tiny_run.parent / "data")]) == 0
    info = json.loads((tmp_path / "net.pt.json").read_text())
    loaded = torch.jit.load(str(out))
    reference = Predictor(tiny_run).logits(test_images)
    with torch.no_grad():
        logits = loaded(torch.from_numpy(preprocess(test_images[:9], info)))
    assert torch.allclose(logits, reference[:9], rtol=0, atol=1e-4)


def test_export_without_data_checks_random_images_and_says_so(tiny_run, tmp_path, capsys):
    out = tmp_path / "net.onnx"
    assert main(["export", str(tiny_run), "--output", str(out), "--data-dir", str(tmp_path / "none"), "--check-images", "16"]) == 0
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


# ---------------------------------------------------------------- the model card of a safetensors export

HOSTILE_NAMES = [
    "<script>alert(0)</script>",
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(2))",
    "![](http://remote/img.png)",
    "<!-- hides the rest",
    "two\nlines\n---\n# heading",
    "`code` *em* _em_ | pipe",
    "&amp; &#60; entity",
    "quote \" ' \\",
    "\U0001f431 cat",
    "",
]


def hostile_card() -> str:
    from cifarlab.inference.card import model_card

    config = {
        "model": "<b>net</b>\n---",
        "model_options": {"note": "`x` <i>y</i>"},
        "classes": HOSTILE_NAMES,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "epoch": 3,
        "weights": {"sha256": "<a href=x>ab</a>"},
        "recipe": {"preset": "<img src=x onerror=alert(1)>", "optimizer": "[sgd](javascript:alert(3))", "epochs": 3},
        "source": {"checkpoint": "/runs/<script>.pt"},
    }
    test = {"test_accuracy": 0.5, "tta": "<x>\n---", "per_class_accuracy": {name: 0.5 for name in HOSTILE_NAMES}}
    measured = {"test": test, "test_source": "results.json", "robustness": {"<img src=x>": 0.25}, "calibration": {"ece\n---": 0.01}}
    return model_card(config, 1234, measured)


def test_model_card_front_matter_is_valid_yaml_whatever_the_names():
    yaml = pytest.importorskip("yaml")
    card = hostile_card()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("\n---\n")[0].removeprefix("---\n"))
    assert front["library_name"] == "cifarlab" and "<b>net</b>\n---" in front["tags"]
    assert front["model-index"][0]["name"] == "<b>net</b>\n---"
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.5


def test_model_card_escapes_every_free_text_value_for_markdown_and_html():
    body = hostile_card().split("\n---\n", 1)[1]
    # no raw markup anywhere: every < is an entity, no link or image syntax, no block started by a name
    assert "<" not in body and "](" not in body and "\n---" not in body and "\n# heading" not in body
    markdown = pytest.importorskip("markdown")
    html = markdown.markdown(body, extensions=["tables"])
    for markup in ("<script", "<img", "<a ", "<!--", "<b>", "<i>", "<em>", "<code>x", "<hr"):
        assert markup not in html, markup
    # each value is still there, as text: a reader sees the names
    for name in (
        "&lt;script&gt;alert(0)&lt;/script&gt;",
        "&lt;img src=x onerror=alert(1)&gt;",
        "[x](javascript:alert(2))",
        "&lt;!-- hides the rest",
        "two lines",
    ):
        assert name in html, name


def relabel_first_float_tensor(folder, dtype: str = "I32") -> str:
    """Rewrite model.safetensors' header so its first F32 tensor claims `dtype` over the same bytes,
    and record the new SHA-256 in config.json: a file that passes every integrity check."""
    import hashlib
    import struct

    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    name = next(key for key, entry in header.items() if key != "__metadata__" and entry["dtype"] == "F32")
    header[name]["dtype"] = dtype
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    relabelled = struct.pack("<Q", len(encoded)) + encoded + data[8 + length :]
    weights.write_bytes(relabelled)
    config = json.loads((folder / "config.json").read_text())
    config["weights"]["sha256"] = hashlib.sha256(relabelled).hexdigest()
    (folder / "config.json").write_text(json.dumps(config))
    return name


def test_export_with_a_relabelled_weight_dtype_is_refused(tiny_run, tmp_path, capsys):
    from PIL import Image

    from cifarlab.common.rundir import RunError
    from cifarlab.inference.export import export_safetensors

    folder, _ = export_safetensors(tiny_run, tmp_path / "export", tiny_run.parent / "data", log=lambda s: None)
    name = relabel_first_float_tensor(folder)
    with pytest.raises(RunError, match=rf"tensor '{name}' is int32, the model holds it as float32"):
        Predictor(folder)
    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32), "red").save(image)
    for command in (["predict", str(folder), str(image), "--quiet"], ["serve", str(folder), "--port", "0"]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "model.safetensors: tensor" in err and "int32" in err, err
