"""Robustness: generated corruptions, the CIFAR-10-C and CIFAR-10.1 readers, `evaluate --corruptions`,
and the report and comparison sections."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab.cli import main
from cifarlab.common.files import RunError
from cifarlab.data import ANY_RECORD_COUNT_ENV, DataError, load_cifar10
from cifarlab.data.corruptions import CORRUPTIONS, SEVERITIES, _disk, _hsv, _rgb, _zoom_matrix, corrupt
from cifarlab.data.shifted import load_cifar101, open_cifar10c
from cifarlab.experiments import pages
from cifarlab.experiments.compare import compare_runs
from cifarlab.experiments.report import ROBUSTNESS_FIGURE, build_report
from cifarlab.inference.robustness import FROM_FILES, GENERATED, read_robustness

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "fog", "elastic_transform"}
# Their published parameters mix two mechanisms, so pixel change does not grow with severity (see the test below).
MIXED = {"saturate", "glass_blur", "elastic_transform"}


def synthetic(n: int, seed: int = 0) -> torch.Tensor:
    """n uint8 images (n, 3, 32, 32) with detail at three scales, like photographs and unlike noise."""
    rng = np.random.default_rng(seed)
    total = torch.zeros(n, 3, 32, 32)
    for size, amplitude in ((4, 160), (8, 60), (16, 30)):
        coarse = torch.from_numpy(rng.uniform(-1, 1, (n, 3, size, size)).astype(np.float32)) * amplitude
        total += torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False)
    return (total + 128).clamp(0, 255).round().to(torch.uint8)


def change(images: torch.Tensor, corrupted: torch.Tensor) -> float:
    return (corrupted.float() - images.float()).abs().mean().item()


# ---------------------------------------------------------------- generated corruptions


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_is_deterministic_and_keeps_shape_and_type(name):
    images = synthetic(6)
    once = corrupt(images, name, 3, seed=1)
    assert once.dtype == torch.uint8 and once.shape == images.shape
    assert torch.equal(once, corrupt(images, name, 3, seed=1))
    assert np.array_equal(corrupt(images.numpy(), name, 3, seed=1), once.numpy())  # numpy in, numpy out
    assert not torch.equal(once, images)
    if name in RANDOM:
        assert not torch.equal(once, corrupt(images, name, 3, seed=2))


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n not in MIXED])
def test_higher_severity_changes_images_more(name):
    images = synthetic(16)
    changes = [change(images, corrupt(images, name, s)) for s in SEVERITIES]
    assert all(a < b for a, b in zip(changes, changes[1:])), changes


def test_the_mixed_corruptions_grow_within_each_mechanism():
    images = synthetic(16)
    at = {(n, s): change(images, corrupt(images, n, s)) for n in MIXED for s in SEVERITIES}
    # saturate: severities 1-2 take saturation away (x0.3, x0.1), 3-5 add it (x1.5, x2 + 0.1, x2.5 + 0.2)
    assert at["saturate", 1] < at["saturate", 2] and at["saturate", 3] < at["saturate", 4] < at["saturate", 5]
    # glass blur: two shuffling passes (4, 5) change more than one at the same sigma (2, 3)
    assert at["glass_blur", 4] > at["glass_blur", 2] and at["glass_blur", 5] > at["glass_blur", 3]
    # elastic: the random affine part shrinks (2.6 to 1 pixel) as the elastic displacement grows; each moves pixels
    assert all(at["elastic_transform", s] > 1 for s in SEVERITIES)


def test_helpers_match_what_they_stand_for():
    from scipy import ndimage

    rgb = np.random.default_rng(0).random((50, 3))
    assert np.allclose(_rgb(_hsv(rgb)), rgb)
    assert np.allclose(_zoom_matrix(32, 1.0), np.eye(32))
    image = np.random.default_rng(1).random((32, 32))
    for factor in (1.07, 1.25):  # make_cifar_c's clipped_zoom through scipy, against the matrix form
        crop = int(np.ceil(32 / factor))
        top = (32 - crop) // 2
        zoomed = ndimage.zoom(image[top : top + crop, top : top + crop], factor, order=1)
        trim = (zoomed.shape[0] - 32) // 2
        matrix = _zoom_matrix(32, factor)
        assert np.allclose(matrix @ image @ matrix.T, zoomed[trim : trim + 32, trim : trim + 32], atol=1e-9)
    for radius, alias in ((0.3, 0.4), (1.5, 0.1)):
        assert _disk(radius, alias).sum() == pytest.approx(1.0)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(DataError, match="unknown corruption 'fros'; known: gaussian_noise"):
        corrupt(synthetic(1), "fros", 1)
    with pytest.raises(DataError, match="severity 6"):
        corrupt(synthetic(1), "fog", 6)
    with pytest.raises(DataError, match=r"uint8 images \(N, 3, H, W\)"):
        corrupt(synthetic(1).float(), "fog", 1)
    for seed in (-1, 2**63, 1.5, True):
        with pytest.raises(DataError, match=r"corruption seed .* must be a whole number from 0 to 2\*\*63 - 1"):
            corrupt(synthetic(1), "fog", 1, seed)


# ---------------------------------------------------------------- published files


def write_cifar10c(folder: Path, images: torch.Tensor, labels: torch.Tensor, names=("gaussian_noise", "contrast"), seed=0) -> Path:
    """CIFAR-10-C's layout, made with `corrupt`: labels.npy and one (5n, 32, 32, 3) uint8 file per corruption."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "labels.npy", np.tile(labels.numpy(), 5).astype(np.uint8))
    for name in names:
        severities = [corrupt(images, name, s, seed).numpy().transpose(0, 2, 3, 1) for s in SEVERITIES]
        np.save(folder / f"{name}.npy", np.concatenate(severities))
    return folder


def write_cifar101(folder: Path, n: int = 30, version: str = "v6") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(folder / f"cifar10.1_{version}_data.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    np.save(folder / f"cifar10.1_{version}_labels.npy", np.arange(n, dtype=np.int64) % 10)
    return folder


def test_cifar10c_reader_accepts_the_published_layout(tmp_path):
    images, labels = synthetic(8), torch.arange(8) % 10
    folder = write_cifar10c(tmp_path / "c", images, labels)
    files = open_cifar10c(folder)
    assert files.corruptions == ("contrast", "gaussian_noise") and files.per_severity == 8
    got, got_labels = files.severity("contrast", 4, count=5)
    assert torch.equal(got, corrupt(images, "contrast", 4)[:5]) and torch.equal(got_labels, labels[:5])
    assert open_cifar10c(folder, ["gaussian_noise"]).corruptions == ("gaussian_noise",)


def _bad_cifar10c(folder: Path, change) -> None:
    write_cifar10c(folder, synthetic(4), torch.arange(4))
    change(folder)


CIFAR10C_DAMAGE = {
    "channels first": (
        lambda f: np.save(f / "contrast.npy", np.zeros((20, 3, 32, 32), np.uint8)),
        "contrast.npy",
        r"shape \(20, 3, 32, 32\), expected \(20, 32, 32, 3\) uint8",
    ),
    "too few images": (lambda f: np.save(f / "contrast.npy", np.zeros((15, 32, 32, 3), np.uint8)), "contrast.npy", r"expected \(20, 32, 32, 3\)"),
    "float images": (lambda f: np.save(f / "contrast.npy", np.zeros((20, 32, 32, 3), np.float32)), "contrast.npy", "float32 array"),
    "label 10": (lambda f: np.save(f / "labels.npy", np.full(20, 10, np.uint8)), "labels.npy", "label 10 of image 0 is outside 0-9"),
    "float labels": (lambda f: np.save(f / "labels.npy", np.zeros(20, np.float32)), "labels.npy", "vector of integer labels"),
    "not 5 severities": (lambda f: np.save(f / "labels.npy", np.zeros(21, np.uint8)), "labels.npy", "21 labels is not 5 severities"),
    "severities disagree": (lambda f: np.save(f / "labels.npy", np.arange(20, dtype=np.uint8) % 10), "labels.npy", "severity 2 differ"),
    "not npy": (lambda f: (f / "contrast.npy").write_bytes(b"not an array"), "contrast.npy", "not a readable .npy array"),
    "pickled": (lambda f: np.save(f / "contrast.npy", np.array([{"a": 1}], dtype=object)), "contrast.npy", "not a readable .npy array"),
    "no labels": (lambda f: (f / "labels.npy").unlink(), "labels.npy", "not found"),
    "labels a FIFO": (
        lambda f: ((f / "labels.npy").unlink(), os.mkfifo(f / "labels.npy")),
        "labels.npy",
        r"is a named pipe \(FIFO\), not a regular .npy file",
    ),
    "images a folder": (
        lambda f: ((f / "contrast.npy").unlink(), (f / "contrast.npy").mkdir()),
        "contrast.npy",
        "is a folder, not a regular .npy file",
    ),
}


@pytest.mark.parametrize("damage", CIFAR10C_DAMAGE)
def test_cifar10c_reader_rejects_wrong_files_in_one_line(tmp_path, damage):
    change, file, message = CIFAR10C_DAMAGE[damage]
    _bad_cifar10c(tmp_path / "c", change)
    with pytest.raises(DataError, match=message) as error:
        open_cifar10c(tmp_path / "c")
    assert str(error.value).startswith(str(tmp_path / "c" / file)) and "\n" not in str(error.value)


def test_cifar10c_reader_wants_the_published_count_and_names(tmp_path, monkeypatch):
    folder = write_cifar10c(tmp_path / "c", synthetic(4), torch.arange(4))
    with pytest.raises(DataError, match="no fog.npy"):
        open_cifar10c(folder, ["fog"])
    monkeypatch.delenv(ANY_RECORD_COUNT_ENV)
    with pytest.raises(DataError, match="labels.npy: 20 labels, expected 50,000"):
        open_cifar10c(folder)


def test_cifar101_reader_accepts_v6_then_v4_and_rejects_wrong_files(tmp_path, monkeypatch):
    data = load_cifar101(write_cifar101(tmp_path / "v6"))
    assert data.source == "CIFAR-10.1 v6" and data.images.shape == (30, 3, 32, 32) and data.labels.dtype == torch.int64
    assert load_cifar101(write_cifar101(tmp_path / "v4", 21, "v4")).source == "CIFAR-10.1 v4"
    folder = write_cifar101(tmp_path / "bad")
    np.save(folder / "cifar10.1_v6_labels.npy", np.arange(29) % 10)
    with pytest.raises(DataError, match=r"cifar10.1_v6_labels.npy: 29 labels, expected 30$"):
        load_cifar101(folder)
    np.save(folder / "cifar10.1_v6_labels.npy", np.arange(30) - 1)
    with pytest.raises(DataError, match="cifar10.1_v6_labels.npy: label -1 of image 0 is outside 0-9"):
        load_cifar101(folder)
    np.save(folder / "cifar10.1_v6_data.npy", np.zeros((30, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"cifar10.1_v6_data.npy: uint8 array of shape \(30, 32, 32\)"):
        load_cifar101(folder)
    with pytest.raises(DataError, match="no CIFAR-10.1 files"):
        load_cifar101(tmp_path)
    monkeypatch.delenv(ANY_RECORD_COUNT_ENV)
    with pytest.raises(DataError, match=r"expected \(2,000, 32, 32, 3\) uint8"):
        load_cifar101(tmp_path / "v6")


# ---------------------------------------------------------------- evaluate, report, compare


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    """A copy of the tiny run after `evaluate --corruptions` (all 15, seed 3) and its printed output."""
    run = tmp_path_factory.mktemp("robust") / "run"
    shutil.copytree(tiny_run, run)
    (run / "evaluation.json").unlink(missing_ok=True)  # the shared run may hold one from another test: start without
    out = _evaluate(run, tiny_run.parent / "data", "--corruptions", "--corruption-seed", "3")
    return run, out


def _evaluate(run: Path, data: Path, *flags: str) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["evaluate", str(run), "--data-dir", str(data), "--device", "cpu", *flags]) == 0
    return buffer.getvalue()


def test_evaluate_corruptions_prints_and_writes_the_table(evaluated):
    run, out = evaluated
    result = json.loads((run / "robustness.json").read_text())
    results = json.loads((run / "results.json").read_text())
    part, clean = result["corruptions"], result["clean"]
    assert part["source"] == GENERATED and part["seed"] == 3 and part["images"] == clean["images"] == 40
    assert clean["accuracy"] == results["test_accuracy"]  # the same images, tta and dtype (float32)
    assert not (run / "evaluation.json").exists()  # robustness.json alone
    assert list(part["accuracy"]) == list(CORRUPTIONS) and all(len(row) == 5 for row in part["accuracy"].values())
    mean = sum(map(sum, part["accuracy"].values())) / 75
    assert part["mean_accuracy"] == pytest.approx(mean)
    assert part["relative_drop"] == pytest.approx((clean["accuracy"] - mean) / clean["accuracy"])
    assert f"accuracy under corruptions: {GENERATED}, seed 3" in out
    header = next(line for line in out.splitlines() if line.startswith("corruption"))
    assert header.split() == ["corruption", "1", "2", "3", "4", "5", "mean"]
    row = next(line for line in out.splitlines() if line.startswith("fog "))
    assert row.split()[1:] == [f"{a:.2%}" for a in part["accuracy"]["fog"]] + [f"{sum(part['accuracy']['fog']) / 5:.2%}"]
    assert f"mean corruption accuracy {mean:.2%}" in out and f"written to {run / 'robustness.json'}" in out


def test_evaluate_corruptions_keeps_an_earlier_evaluation_and_prints_the_table_once(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    data = str(tiny_run.parent / "data")
    assert main(["evaluate", str(run), "--data-dir", data, "--device", "cpu", "--tta", "2"]) == 0
    full = (run / "evaluation.json").read_bytes()
    capsys.readouterr()
    assert (
        main(["evaluate", str(run), "--data-dir", data, "--device", "cpu", "--tta", "0", "--corruptions", "--corruption-names", "fog", "contrast"])
        == 0
    )
    out, err = capsys.readouterr()
    assert (run / "evaluation.json").read_bytes() == full  # the TTA-2 evaluation is still there
    assert json.loads((run / "robustness.json").read_text())["tta"] == 0
    for name in ("fog", "contrast"):  # one row each, on the terminal as a whole (stdout and the stderr progress)
        assert sum(line.startswith(f"{name} ") for line in (out + err).splitlines()) == 1, (out, err)
    assert "measured 2 of 2 corruptions" in err and "test accuracy" not in out
    assert main(["evaluate", str(run), "--data-dir", data, "--device", "cpu", "--tta", "0"]) == 0
    out = capsys.readouterr().out  # a plain evaluation with other settings replaces the file, and says so
    assert f"{run / 'evaluation.json'}: replaces an evaluation made with tta=2, float32, the epoch-2 checkpoint" in out
    assert json.loads((run / "evaluation.json").read_text())["tta"] == 0
    assert main(["evaluate", str(run), "--data-dir", data, "--device", "cpu", "--tta", "0"]) == 0
    assert "replaces" not in capsys.readouterr().out  # the same settings again: nothing to say


def test_files_are_read_instead_and_labelled_as_such(evaluated, tiny_run, tmp_path):
    run, _ = evaluated
    data = tiny_run.parent / "data"
    test = load_cifar10(data, download=False)
    names = ("glass_blur", "fog")
    folder = write_cifar10c(tmp_path / "CIFAR-10-C", test.test_images, test.test_labels, names, seed=3)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    out = _evaluate(copy, data, "--corruptions-dir", str(folder), "--cifar101-dir", str(write_cifar101(tmp_path / "c101")))
    result = json.loads((copy / "robustness.json").read_text())
    generated = json.loads((run / "robustness.json").read_text())["corruptions"]["accuracy"]
    assert result["corruptions"]["source"] == FROM_FILES and "seed" not in result["corruptions"]
    assert result["corruptions"]["accuracy"] == {n: generated[n] for n in sorted(names)}  # the same images, the same figures
    assert result["cifar10_1"]["source"] == "CIFAR-10.1 v6" and result["cifar10_1"]["images"] == 30
    assert f"accuracy under corruptions: {FROM_FILES}" in out and "CIFAR-10.1 v6: accuracy" in out


def test_bad_robustness_options_and_files_fail_before_any_work(evaluated, tiny_run, tmp_path, capsys):
    run, _ = evaluated
    data = str(tiny_run.parent / "data")
    wrong = write_cifar10c(tmp_path / "c", synthetic(40), (torch.arange(40) + 1) % 10, ("contrast",))
    cases = {
        ("--corruptions", "--corruption-subset", "0"): "--corruption-subset 0: must be at least 1",
        ("--corruptions", "--corruption-seed", "-1"): "corruption seed -1 (--corruption-seed): must be a whole number from 0",
        ("--corruptions", "--corruption-names", "frost"): "unknown corruption 'frost'",
        ("--corruption-names", "fog"): "go with --corruptions",
        ("--corruptions-dir", str(wrong)): "not made from this CIFAR-10 test set (label of image 0 is 1, the test set's 0)",
        ("--cifar101-dir", str(tmp_path)): "no CIFAR-10.1 files",
    }
    for flags, message in cases.items():
        before = (run / "robustness.json").read_bytes()
        assert main(["evaluate", str(run), "--data-dir", data, "--device", "cpu", *flags]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (flags, err)
        assert (run / "robustness.json").read_bytes() == before


def test_subset_and_names_choose_the_images_and_rows(evaluated, tiny_run, tmp_path):
    run, _ = evaluated
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _evaluate(
        copy,
        tiny_run.parent / "data",
        "--corruptions",
        "--corruption-names",
        "fog",
        "pixelate",
        "--corruption-subset",
        "10",
        "--corruption-seed",
        "3",
    )
    part = json.loads((copy / "robustness.json").read_text())["corruptions"]
    assert list(part["accuracy"]) == ["fog", "pixelate"] and part["images"] == 10


def test_report_and_compare_show_robustness(evaluated, tiny_run, tmp_path):
    run, _ = evaluated
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    quiet = dict(log=lambda s: None, progress=False, device="cpu")
    html = build_report(copy, tiny_run.parent / "data", **quiet).read_text()
    result = read_robustness(copy / "robustness.json")
    assert "<h2>Robustness</h2>" in html and GENERATED.replace("&", "&amp;") in html
    assert f'<td>mean corruption accuracy</td><td class="num">{pages.fmt(result["corruptions"]["mean_accuracy"], "pct")}</td>' in html
    assert (copy / ROBUSTNESS_FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    plain = tmp_path / "plain"
    shutil.copytree(tiny_run, plain)
    page = compare_runs([copy, plain], tmp_path / "cmp").read_text()
    assert "<h2>Robustness</h2>" in page and "mean corruption accuracy" in page
    assert pages.fmt(result["corruptions"]["mean_accuracy"], "pct") in page

    (copy / "robustness.json").unlink()
    html = build_report(copy, tiny_run.parent / "data", **quiet).read_text()
    assert "Robustness" not in html and not (copy / ROBUSTNESS_FIGURE).exists()


def test_a_damaged_robustness_file_is_a_one_line_error(evaluated, tmp_path):
    run, _ = evaluated
    good = json.loads((run / "robustness.json").read_text())
    path = tmp_path / "robustness.json"
    damaged = {
        "clean": ({**good, "clean": None}, "clean should be an object"),
        "accuracy": ({**good, "corruptions": {**good["corruptions"], "accuracy": {"fog": [0.5]}}}, "5 accuracies"),
        "mean": ({**good, "corruptions": {**good["corruptions"], "mean_accuracy": "high"}}, "corruptions.mean_accuracy should be a number"),
    }
    for value, message in damaged.values():
        path.write_text(json.dumps(value))
        with pytest.raises(RunError, match=message):
            read_robustness(path)
