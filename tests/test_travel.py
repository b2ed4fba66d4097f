"""Models that travel (a safetensors folder with a model card) and data from where people have it
(the Hugging Face cifar10 parquet files)."""

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from cifarlab.cli import main
from cifarlab.common.files import RunError
from cifarlab.data import ANY_RECORD_COUNT_ENV, BIN_TRAIN, DataError, load_cifar10
from cifarlab.inference.export import ExportError, export_safetensors
from cifarlab.inference.model import Predictor
from cifarlab.serve import create_app
from conftest import fake_batch, write_binary

EXPORT_FILES = {"model.safetensors", "config.json", "README.md"}


def png(pixels: np.ndarray, mode: str = "RGB") -> bytes:
    """PNG bytes of one image given as 3,072 CHW bytes (the official files' order)."""
    image = Image.fromarray(pixels.reshape(3, 32, 32).transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- safetensors export


@pytest.fixture(scope="module")
def data_dir(tiny_run):
    return tiny_run.parent / "data"


@pytest.fixture(scope="module")
def test_images(data_dir) -> torch.Tensor:
    return load_cifar10(data_dir, download=False).test_images


@pytest.fixture(scope="module")
def exported(tiny_run, data_dir, tmp_path_factory):
    """The tiny run exported by the command line (read-only for the tests: copy it to change it)."""
    folder = tmp_path_factory.mktemp("export") / "tiny-safetensors"
    assert main(["export", str(tiny_run), "--format", "safetensors", "--output", str(folder), "--data-dir", str(data_dir)]) == 0
    return folder


@pytest.fixture(scope="module")
def image_files(test_images, tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, image in enumerate(test_images[:4]):
        paths.append(folder / f"img{i}.png")
        paths[-1].write_bytes(png(image.numpy().reshape(-1)))
    return paths


def test_export_writes_the_three_files_with_the_models_config(exported, tiny_run, capsys):
    assert {p.name for p in exported.iterdir()} == EXPORT_FILES
    config = json.loads((exported / "config.json").read_text())
    run = Predictor(tiny_run)
    for key in ("model", "model_options", "classes", "mean", "std", "channels_last", "train_dtype"):
        assert config[key] == run.meta[key], key
    assert config["format"] == "cifarlab-safetensors" and config["format_version"] == 1
    assert config["input_size"] == [3, 32, 32] and config["train_dtype"] == "bfloat16"


def test_exported_folder_gives_the_runs_logits_exactly(exported, tiny_run, test_images):
    run, folder = Predictor(tiny_run), Predictor(exported)
    assert torch.equal(folder.logits(test_images), run.logits(test_images))
    assert torch.equal(folder.logits(test_images, tta=2), run.logits(test_images, tta=2))
    assert (folder.classes, folder.epoch, folder.trained_tta) == (run.classes, run.epoch, run.trained_tta)
    assert folder.checkpoint == exported / "model.safetensors"
    # the weights file itself, given directly, is the same model
    assert torch.equal(Predictor(exported / "model.safetensors").logits(test_images[:5]), run.logits(test_images[:5]))


def test_predict_on_the_folder_answers_as_on_the_run(exported, tiny_run, image_files, tmp_path, capsys):
    reports = []
    for source in (tiny_run, exported):
        out = tmp_path / f"{source.name}.json"
        assert main(["predict", str(source), *map(str, image_files), "--output", str(out), "--quiet", "--top-k", "10"]) == 0
        reports.append(json.loads(out.read_text()))
    assert reports[0]["predictions"] == reports[1]["predictions"]
    assert reports[1]["checkpoint"].endswith("model.safetensors")


def test_the_folder_serves_the_runs_answers(exported, tiny_run, image_files):
    answers = []
    for source in (tiny_run, exported):
        with TestClient(create_app(source, top_k=10, max_wait_ms=0)) as client:
            health = client.get("/health").json()
            assert health["model"] == "paper"
            answers.append([client.post("/predict", files={"file": (p.name, p.read_bytes(), "image/png")}).json() for p in image_files])
    assert answers[0] == answers[1]
    assert all(len(a["top_k"]) == 10 for a in answers[1])


def test_evaluate_on_the_folder_matches_the_run_and_writes_beside_the_model(exported, tiny_run, data_dir, tmp_path, capsys):
    folder = shutil.copytree(exported, tmp_path / "copy")
    assert main(["evaluate", str(folder), "--data-dir", str(data_dir), "--device", "cpu"]) == 0
    evaluation = json.loads((folder / "evaluation.json").read_text())
    results = json.loads((tiny_run / "results.json").read_text())
    assert evaluation["test_accuracy"] == results["test_accuracy"] and evaluation["tta"] == results["tta"]


def test_model_card_has_front_matter_and_the_measured_figures(exported, tiny_run):
    card = (exported / "README.md").read_text()
    results = json.loads((tiny_run / "results.json").read_text())
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert card.startswith("---\n")
    for line in ("library_name: cifarlab", "datasets:\n- cifar10", "metrics:\n- accuracy", "model-index:", f"value: {results['test_accuracy']:.4f}"):
        assert line in front, line
    assert f"{results['test_accuracy']:.2%}" in body
    for section in ("## How to use", "## Model", "## Training recipe", "## Training data", "## Evaluation", "## Intended use", "## Limitations"):
        assert section in body, section
    assert "## Robustness\n\nNot measured." in body and "## Calibration\n\nNot measured." in body
    params = sum(p.numel() for p in Predictor(tiny_run).model.parameters())
    train_images = json.loads((tiny_run / "config.json").read_text())["train_images"]
    assert f"{params:,} parameters" in body and "| epochs | 2 |" in body and f"trained on {train_images:,} training images" in body


def test_model_card_shows_robustness_and_calibration_when_measured(tiny_run, data_dir, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock"))
    # as their schemas have them (common/runfiles.py): the card reads them as every reader does
    (run / "robustness.json").write_text(json.dumps({"mean_corruption_accuracy": 0.4321, "clean": {"accuracy": 0.5, "images": 40}}))
    (run / "calibration.json").write_text(json.dumps({"ece": 0.0567, "temperature": 1.5, "epoch": 2}))
    folder, _ = export_safetensors(run, data_dir=data_dir, log=lambda s: None)
    assert folder == run / "safetensors"  # the default place
    card = (folder / "README.md").read_text()
    assert "| mean\\_corruption\\_accuracy | 0.4321 |" in card and "| ece | 0.0567 |" in card  # names escaped for Markdown
    assert "Not measured." not in card.split("## Robustness")[1].split("## Intended use")[0]


def test_export_replaces_an_earlier_export_but_nothing_else(tiny_run, data_dir, tmp_path):
    folder = tmp_path / "out"
    export_safetensors(tiny_run, folder, data_dir, log=lambda s: None)
    (folder / "evaluation.json").write_text("{}")  # an earlier evaluation of the earlier weights
    export_safetensors(tiny_run, folder, data_dir, log=lambda s: None)
    assert {p.name for p in folder.iterdir()} == EXPORT_FILES
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a cifarlab export"):
        export_safetensors(tiny_run, folder, data_dir, log=lambda s: None)
    assert (folder / "notes.txt").read_text() == "mine"


def _flip_a_weight_byte(folder):
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))


def _edit_config(**changes):
    def edit(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))

    return edit


def _other_models_weights(folder):
    """Weights of another model, their SHA-256 recorded: the file is intact but does not fit."""
    import hashlib

    from safetensors.torch import save

    data = save({"fc.weight": torch.zeros(10, 4)})
    (folder / "model.safetensors").write_bytes(data)
    _edit_config(weights={"file": "model.safetensors", "sha256": hashlib.sha256(data).hexdigest()})(folder)


@pytest.mark.parametrize(
    "damage, file, words",
    [
        (_flip_a_weight_byte, "model.safetensors", "SHA-256 differs"),
        (_other_models_weights, "model.safetensors", "cannot rebuild model 'paper'"),
        (_edit_config(model_options={"widths": [4, 4, 4, 4, 8, 8, 8], "fc_widths": [16, 16]}), "model.safetensors", "cannot rebuild"),
        (_edit_config(classes=["cat", "dog"]), "model.safetensors", "names 2 classes but the model has 10 outputs"),
        (_edit_config(mean=[0.5, 0.5]), "config.json", "mean should be 3 numbers"),
        (_edit_config(format="something-else"), "config.json", "not a cifarlab model export"),
        (_edit_config(format_version=99), "config.json", "newer than this cifarlab reads"),
        (lambda folder: (folder / "config.json").write_text("{not json"), "config.json", "not valid JSON"),
        (lambda folder: (folder / "config.json").unlink(), "config.json", "not found"),
        (lambda folder: (folder / "model.safetensors").unlink(), "", "no checkpoint there"),
    ],
)
def test_a_damaged_export_is_a_one_line_error_naming_the_file(exported, image_files, tmp_path, capsys, damage, file, words):
    folder = shutil.copytree(exported, tmp_path / "damaged")
    damage(folder)
    assert main(["predict", str(folder), str(image_files[0]), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(folder / file) in err and words in err, err
    with pytest.raises(RunError):
        create_app(folder)


# ---------------------------------------------------------------- Hugging Face parquet files


def write_parquet(path, images: list[bytes], labels: list, image_column: str = "img", label_column: str = "label"):
    """One parquet file as the Hugging Face cifar10 data set has them (img: {bytes, path}, label)."""
    images_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            image_column: pa.array([{"bytes": b, "path": None} for b in images], type=images_type),
            label_column: pa.array(labels, type=pa.int64()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def hf_folder(root, per_batch: int = 20, test: int = 20):
    """plain_text/ with the same images and labels write_binary(root) writes, the training split in two shards."""
    batches = [fake_batch(per_batch, i) for i in range(len(BIN_TRAIN))]
    images = [png(row) for pixels, _ in batches for row in pixels]
    labels = [int(label) for _, batch_labels in batches for label in batch_labels]
    half = len(images) // 2
    folder = root / "plain_text"
    write_parquet(folder / "train-00000-of-00002.parquet", images[:half], labels[:half])
    write_parquet(folder / "train-00001-of-00002.parquet", images[half:], labels[half:])
    test_pixels, test_labels = fake_batch(test, len(BIN_TRAIN))
    write_parquet(folder / "test-00000-of-00001.parquet", [png(row) for row in test_pixels], test_labels.tolist())
    return folder


def test_parquet_files_load_equal_to_the_binary_files(tmp_path, capsys):
    write_binary(tmp_path / "binary")
    hf_folder(tmp_path / "hf")
    binary, parquet = load_cifar10(tmp_path / "binary", download=False), load_cifar10(tmp_path / "hf", download=False)
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(parquet, field), getattr(binary, field)), field
    assert parquet.classes == binary.classes and parquet.train_images.dtype == torch.uint8
    assert parquet.source == str(tmp_path / "hf" / "plain_text")
    # the files in the folder given, not in plain_text/, and --data-dir finding them
    shutil.move(tmp_path / "hf" / "plain_text", tmp_path / "flat")
    assert torch.equal(load_cifar10(tmp_path / "flat", download=False).test_images, binary.test_images)
    assert main(["info", "--data-dir", str(tmp_path / "flat"), "--json"]) == 0
    assert "ok, 100 training and 20 test images" in capsys.readouterr().out


def _one_file(tmp_path, pixels=None, labels=None, **columns):
    """A test split whose one file has the given images (default 20 fake ones) and labels."""
    default_pixels, default_labels = fake_batch(20, 0)
    images = [png(row) for row in default_pixels] if pixels is None else pixels
    folder = tmp_path / "plain_text"
    write_parquet(folder / "train-00000-of-00001.parquet", [png(row) for row in default_pixels], default_labels.tolist())
    return write_parquet(folder / "test-00000-of-00001.parquet", images, default_labels.tolist() if labels is None else labels, **columns)


def _gray_image(rows):
    return [png(rows[0], mode="L"), *map(png, rows[1:])]


def _small_image(rows):
    small = Image.fromarray(rows[0].reshape(3, 32, 32).transpose(1, 2, 0)).resize((28, 28))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    return [*map(png, rows[:3]), buffer.getvalue(), *map(png, rows[4:])]


ROWS = fake_batch(20, 0)[0]


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda tmp: _one_file(tmp, labels=[*range(10), 10, *range(9)]), "label 10 of row 10 is outside 0-9"),
        (lambda tmp: _one_file(tmp, labels=[-1, *[0] * 19]), "label -1 of row 0 is outside 0-9"),
        (lambda tmp: _one_file(tmp, labels=[0, None, *[0] * 18]), "label of row 1 is missing"),
        (lambda tmp: _one_file(tmp, pixels=_small_image(ROWS)), "image of row 3 is 28x28 RGB, expected 32x32 RGB"),
        (lambda tmp: _one_file(tmp, pixels=_gray_image(ROWS)), "image of row 0 is 32x32 L, expected 32x32 RGB"),
        (lambda tmp: _one_file(tmp, pixels=[b"not a png", *map(png, ROWS[1:])]), "image of row 0 is not a readable image"),
        (lambda tmp: _one_file(tmp, label_column="labels"), "no column 'label'"),
        (lambda tmp: _one_file(tmp, image_column="image"), "no column 'img'"),
    ],
)
def test_a_bad_parquet_file_is_a_one_line_error_naming_it(tmp_path, make, words):
    path = make(tmp_path)
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path, download=False)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and words in message, message


def test_parquet_labels_that_are_not_integers_are_refused(tmp_path):
    path = tmp_path / "plain_text" / "test-00000-of-00001.parquet"
    _one_file(tmp_path)
    table = pq.read_table(path)
    pq.write_table(table.set_column(1, "label", pa.array([str(v) for v in table["label"].to_pylist()])), path)
    with pytest.raises(DataError, match=f"^{path}: column 'label' should hold integers 0-9, found string$"):
        load_cifar10(tmp_path, download=False)


def test_parquet_row_counts_are_the_official_ones(tmp_path, monkeypatch):
    hf_folder(tmp_path)
    monkeypatch.delenv(ANY_RECORD_COUNT_ENV)
    folder = tmp_path / "plain_text"
    with pytest.raises(DataError) as error:
        load_cifar10(tmp_path, download=False)
    assert str(error.value) == (f"{folder / 'train-*.parquet'} (2 files): 100 rows, CIFAR-10's train split holds 50,000 (truncated or wrong file)")
    for shard in folder.glob("train-*"):  # one file of the right count: the test file is named next
        shard.unlink()
    write_parquet(folder / "train-00000-of-00001.parquet", [png(ROWS[0])] * 50_000, [0] * 50_000)
    with pytest.raises(DataError, match=r"test-00000-of-00001.parquet: 20 rows, CIFAR-10's test split holds 10,000"):
        load_cifar10(tmp_path, download=False)


def test_a_parquet_folder_without_a_test_split_is_named_incomplete(tmp_path):
    folder = hf_folder(tmp_path)
    (folder / "test-00000-of-00001.parquet").unlink()
    with pytest.raises(DataError, match=f"^{folder}: incomplete Hugging Face CIFAR-10 folder, no test-\\*.parquet file$"):
        load_cifar10(tmp_path, download=False)


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    path = _one_file(tmp_path)
    path.write_bytes(b"PAR1 but not really")
    with pytest.raises(DataError, match=f"^{path}: not a readable parquet file"):
        load_cifar10(tmp_path, download=False)
