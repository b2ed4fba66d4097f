"""`cifarlab predict`: image loading, mixed good and bad files, fidelity with evaluate, checkpoint errors."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab.cli import main
from cifarlab.common.checkpoint import load_checkpoint
from cifarlab.common.files import RunError, atomic_torch_save
from cifarlab.common.metrics import predict_logits
from cifarlab.data import load_cifar10
from cifarlab.inference import predict as predict_module
from cifarlab.inference.predict import ImageError, load_image
from cifarlab.models.checkpoint import model_from_checkpoint


def to_pil(image: torch.Tensor) -> Image.Image:
    """A uint8 (3, 32, 32) tensor as a Pillow RGB image."""
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def write_pngs(images: torch.Tensor, folder: Path, labels=None, classes=None) -> list[Path]:
    """One PNG per image; in FOLDER/CLASS/ when labels are given."""
    paths = []
    for i, image in enumerate(images):
        sub = folder / classes[labels[i]] if labels is not None else folder
        sub.mkdir(parents=True, exist_ok=True)
        paths.append(sub / f"{i:05d}.png")
        to_pil(image).save(paths[-1])
    return paths


def evaluate_path_logits(run: Path, images: torch.Tensor) -> torch.Tensor:
    """Logits exactly as `cifarlab evaluate` computes them (same function, same arguments)."""
    model, meta = model_from_checkpoint(load_checkpoint(run))
    return predict_logits(model, images, meta["mean"], meta["std"], batch_size=1000, tta=0, amp="off", channels_last=meta["channels_last"])


@pytest.fixture
def mixed_folder(tiny_run, tmp_path) -> Path:
    """12 test images as FOLDER/CLASS/N.png, plus bad and odd files among them."""
    data = load_cifar10(tiny_run.parent / "data", download=False)
    folder = tmp_path / "images"
    write_pngs(data.test_images[:12], folder, data.test_labels[:12].tolist(), data.classes)
    (folder / "cat" / "notes.png").write_text("this is not an image\n")
    good = (folder / "cat" / "00003.png").read_bytes()
    (folder / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("L", (5000, 5000)).save(folder / "dog" / "bomb.png")  # 25 Mpixel, a few KB on disk
    to_pil(data.test_images[0]).resize((96, 64)).convert("L").save(folder / "bird" / "grey.jpg")
    to_pil(data.test_images[1]).convert("RGBA").save(folder / "bird" / "alpha.png")
    (folder / "bird" / "README.txt").write_text("skipped: no image extension\n")
    return folder


def test_predict_folder_with_good_and_bad_files(tiny_run, mixed_folder, tmp_path, capsys):
    out = tmp_path / "predictions.json"
    code = main(["predict", str(tiny_run), str(mixed_folder), "--top-k", "2", "--output", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert code == 1  # some files failed; the rest were predicted
    report = json.loads(out.read_text())
    rows = {Path(r["path"]).name: r for r in report["predictions"]}
    assert report["files"] == 17 and report["errors"] == 3 and len(rows) == 17
    assert "not an image" in rows["notes.png"]["error"]
    assert "truncated" in rows["truncated.png"]["error"]
    assert "too many pixels" in rows["bomb.png"]["error"]
    for name in ("notes.png", "truncated.png", "bomb.png"):
        assert f"{name}" in text and rows[name]["top1"] is None
        line = next(line for line in text.splitlines() if name in line)
        assert "error:" in line
    assert "README.txt" not in rows and "1 file without an image extension skipped" in text

    good = [r for r in report["predictions"] if "error" not in r]
    assert len(good) == 14
    for r in good:
        assert len(r["top_k"]) == 2 and r["top_k"][0]["class"] == r["top1"] and r["top_k"][0]["prob"] == r["top1_prob"]
        assert r["top_k"][0]["prob"] >= r["top_k"][1]["prob"]
        assert len(r["logits"]) == 10
    assert rows["grey.jpg"]["converted"] == ["L to RGB", "resized 96x64 to 32x32 (centre crop, bicubic)"]
    assert rows["alpha.png"]["converted"] == ["RGBA to RGB over white"]
    assert rows["00000.png"]["converted"] == [] and rows["00000.png"]["original_size"] == [32, 32]

    # Image-folder layout: labels from the folder names, accuracy over the 14 good files.
    assert report["labelled_files"] == 14
    correct = [r["correct"] for r in good]
    assert report["accuracy"] == pytest.approx(sum(correct) / 14)
    assert all(r["correct"] == (r["top1"] == r["label"]) for r in good)
    assert set(report["per_class_accuracy"]) == {r["label"] for r in good}
    assert "accuracy" in text and "labelled by their folder" in text


def test_predict_writes_csv_with_top_k_columns(tiny_run, mixed_folder, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    main(
        [
            "predict",
            str(tiny_run),
            str(mixed_folder / "bird"),
            str(mixed_folder / "cat" / "notes.png"),
            "--top-k",
            "3",
            "--output",
            str(out),
            "--quiet",
        ]
    )
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[:7] == ["path", "top1", "top1_prob", "top2", "top2_prob", "top3", "top3_prob"]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["notes.png"]["top1"] == "" and "not an image" in by_name["notes.png"]["error"]
    assert by_name["grey.jpg"]["converted"].startswith("L to RGB")
    assert 0 < float(by_name["alpha.png"]["top1_prob"]) <= 1
    # A folder that is not laid out by class (here a class folder itself) has no labels.
    assert by_name["alpha.png"]["label"] == "" and "accuracy" not in capsys.readouterr().out


def _predict_json_logits(run: Path, folder: Path, out: Path, batch_size: int) -> tuple[list[str], torch.Tensor]:
    main(["predict", str(run), str(folder), "--batch-size", str(batch_size), "--output", str(out), "--quiet"])
    rows = json.loads(out.read_text())["predictions"]
    return [r["path"] for r in rows], torch.tensor([r["logits"] for r in rows], dtype=torch.float32)


def test_png_fidelity_with_evaluate(tiny_run, tmp_path):
    """A 32x32 PNG of a test image gets exactly the logits `evaluate` computes for that image.

    Bit-for-bit when the batches are the same (here: all 40 test images in one batch, as
    evaluate does). In other batch sizes CPU convolution kernels block the work differently
    and the last bits of float32 change, for evaluate as much as for predict: within 1e-5.
    """
    data = load_cifar10(tiny_run.parent / "data", download=False)
    paths = write_pngs(data.test_images, tmp_path / "pngs")
    expected = evaluate_path_logits(tiny_run, data.test_images)
    names, logits = _predict_json_logits(tiny_run, tmp_path / "pngs", tmp_path / "p.json", batch_size=256)
    assert names == [str(p) for p in paths]
    assert torch.equal(logits, expected)
    _, logits = _predict_json_logits(tiny_run, tmp_path / "pngs", tmp_path / "p16.json", batch_size=16)
    assert torch.allclose(logits, expected, rtol=0, atol=1e-5) and torch.equal(logits.argmax(1), expected.argmax(1))


@pytest.mark.slow
def test_png_fidelity_on_real_test_images(tiny_run, real_data, tmp_path):
    """The first 1,000 real test images as PNGs: the same pixels, and the logits of evaluate's first batch."""
    data = load_cifar10(real_data, download=False)
    images = data.test_images[:1000]
    paths = write_pngs(images, tmp_path / "pngs")
    assert torch.equal(torch.stack([load_image(p).pixels for p in paths]), images)  # pixels, channel order, dtype
    expected = evaluate_path_logits(tiny_run, data.test_images)[:1000]  # evaluate's full pass, batches of 1,000
    _, logits = _predict_json_logits(tiny_run, tmp_path / "pngs", tmp_path / "p.json", batch_size=1000)
    assert torch.equal(logits, expected)


def test_load_image_conversions_and_refusals(tmp_path, monkeypatch):
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # fully transparent red: white after compositing
    image = load_image(_png_bytes(rgba))
    assert image.converted == ("RGBA to RGB over white",) and image.pixels.unique().tolist() == [255]
    grey = load_image(_png_bytes(Image.new("L", (64, 32), 7)))
    assert grey.pixels.shape == (3, 32, 32) and grey.pixels.dtype == torch.uint8 and grey.pixels.unique().tolist() == [7]
    assert grey.original_size == (64, 32) and grey.original_mode == "L"
    deep = Image.fromarray(np.full((32, 32), 257 * 200, dtype=np.uint16))  # 16-bit greyscale
    assert load_image(_png_bytes(deep)).pixels.unique().tolist() == [200]
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"\x00garbage bytes")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    # Pillow's own bomb check, warning level, is an error too.
    monkeypatch.setattr(predict_module, "MAX_PIXELS", 10**9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(_png_bytes(Image.new("RGB", (40, 40))))  # 1,600 pixels: above the limit, below twice it


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- checkpoints that cannot be used


@pytest.fixture
def png(tiny_run, tmp_path) -> Path:
    data = load_cifar10(tiny_run.parent / "data", download=False)
    return write_pngs(data.test_images[:1], tmp_path / "one")[0]


def _altered_checkpoint(tiny_run, tmp_path, **meta) -> Path:
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    state["meta"].update(meta)
    atomic_torch_save(tmp_path / "altered.pt", state)
    return tmp_path / "altered.pt"


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"model": "no-such-net"}, "unknown model 'no-such-net'"),
        ({"model_options": {"widths": [4, 8, 8, 8, 16, 16, 16], "fc_widths": [16, 16]}}, "size mismatch for features.0.weight"),
    ],
)
def test_unusable_checkpoints_give_one_line_errors(tiny_run, tmp_path, png, capsys, meta, message):
    ckpt = _altered_checkpoint(tiny_run, tmp_path, **meta)
    for argv in (["predict", str(ckpt), str(png)], ["export", str(ckpt), "--data-dir", str(tmp_path)], ["serve", str(ckpt), "--port", "1"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err and err.startswith(f"cifarlab {argv[0]}: error:")


def test_checkpoint_without_metadata_is_refused(tiny_run, tmp_path, png, capsys):
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    del state["meta"]["mean"]
    atomic_torch_save(tmp_path / "nomean.pt", state)
    assert main(["export", str(tmp_path / "nomean.pt")]) == 1
    assert "checkpoint metadata lacks mean" in capsys.readouterr().err


def test_checkpoint_with_arbitrary_objects_is_refused(tiny_run, tmp_path, png, capsys):
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    state["meta"]["extra"] = Path("/")  # any non-tensor object: weights_only loading refuses it
    torch.save(state, tmp_path / "pickled.pt")
    assert main(["predict", str(tmp_path / "pickled.pt"), str(png)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a readable cifarlab checkpoint" in err


def test_a_foreign_pickle_is_refused_without_torchs_warning(tmp_path):
    """A plain pickle (protocol 4) made torch warn on stderr above cifarlab's one-line error."""
    import pickle
    import warnings

    (tmp_path / "checkpoint.pt").write_bytes(pickle.dumps({"model": {"w": 1}}, protocol=4))
    with warnings.catch_warnings(record=True) as shown, pytest.raises(RunError, match="not a readable cifarlab checkpoint"):
        warnings.simplefilter("always")
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert [str(w.message) for w in shown] == []


def test_bad_output_name_and_empty_folder(tiny_run, tmp_path, png, capsys):
    assert main(["predict", str(tiny_run), str(png), "--output", str(tmp_path / "p.txt")]) == 1
    assert "must end in .csv or .json" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tiny_run), str(tmp_path / "empty")]) == 1
    assert "no image files" in capsys.readouterr().err


# ---------------------------------------------------------------- values out of range: one line, never nan


@pytest.fixture
def red_png(tmp_path) -> Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (32, 32), "red").save(path)
    return path


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e300])
def test_calibration_temperature_outside_the_fit_range_is_refused(tiny_run, tmp_path, red_png, capsys, temperature):
    """1e-300 passes "positive and finite" but overflows the logits: predict printed nan%, serve answered 500."""
    import shutil

    from cifarlab.common.rundir import RunError
    from cifarlab.serve import create_app

    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    epoch = load_checkpoint(run)["epoch"]
    (run / "calibration.json").write_text(
        json.dumps(
            {"temperature": temperature, "epoch": epoch, "fitted_on": "validation split (20 images)", "val_nll_before": 2.3, "val_nll_after": 2.2}
        )
    )
    assert main(["predict", str(run), str(red_png), "--calibrated", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "nan" not in captured.out and captured.err.count("\n") == 1, captured
    assert "calibration.json" in captured.err and "temperature" in captured.err
    with pytest.raises(RunError, match="temperature"):
        create_app(run, calibrated=True)  # serve refuses to start rather than answering 500


def test_non_finite_probabilities_are_an_error_not_nan(tiny_run):
    from cifarlab.inference.model import NonFiniteProbabilities, Predictor

    predictor = Predictor(tiny_run, temperature=1e-300)  # a temperature given in code is not range-checked
    logits = predictor.logits(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(NonFiniteProbabilities, match="not finite"):
        predictor.top_k(logits, 3)


def test_top_k_beyond_the_classes_is_refused_by_predict_as_by_serve(tiny_run, red_png, capsys):
    """predict --top-k 11 quietly showed 10 while serve ?top_k=11 answered 422: both refuse, naming the range."""
    from fastapi.testclient import TestClient

    from cifarlab.serve import create_app

    for k in ("11", "0"):
        assert main(["predict", str(tiny_run), str(red_png), "--top-k", k, "--quiet"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--top-k {k}: must be from 1 to 10" in err, err
    with TestClient(create_app(tiny_run, max_wait_ms=0)) as client:
        response = client.post("/predict?top_k=11", files={"file": ("red.png", red_png.read_bytes(), "image/png")})
    assert response.status_code == 422 and response.json() == {"detail": "top_k 11: must be from 1 to 10 (the model's number of classes)"}
    assert main(["serve", str(tiny_run), "--top-k", "11"]) == 1
    assert "--top-k 11: must be from 1 to 10" in capsys.readouterr().err


def test_serve_refuses_to_start_on_weights_giving_nan(tiny_run, tmp_path, capsys):
    """NaN weights would make every request fail; the service says so at start-up, in one line."""
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    state = load_checkpoint(run)
    name = next(key for key, value in state["model"].items() if value.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    atomic_torch_save(run / "checkpoint.pt", state)
    assert main(["serve", str(run), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not finite numbers" in err, err
