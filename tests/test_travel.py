"""Data from where people already have it: the Hugging Face cifar10 parquet files."""

import io
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cifarlab.cli import main
from cifarlab.data import ANY_RECORD_COUNT_ENV, BIN_TRAIN, DataError, load_cifar10
from conftest import fake_batch, write_binary


def png(pixels: np.ndarray, mode: str = "RGB") -> bytes:
    """PNG bytes of one image given as 3,072 CHW bytes (the official files' order)."""
    image = Image.fromarray(pixels.reshape(3, 32, 32).transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- Hugging Face parquet files


def write_parquet(path, images: list[bytes], labels: list, image_column: str = "img", label_column: str = "label"):
    """One parquet file as the Hugging Face cifar10 data set has them (img: {bytes, path}, label)."""
    images_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        image_column: pa.array([{"bytes": b, "path": None} for b in images], type=images_type),
        label_column: pa.array(labels, type=pa.int64()),
    })
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
    return write_parquet(folder / "test-00000-of-00001.parquet", images,
                         default_labels.tolist() if labels is None else labels, **columns)


def _gray_image(rows):
    return [png(rows[0], mode="L"), *map(png, rows[1:])]


def _small_image(rows):
    small = Image.fromarray(rows[0].reshape(3, 32, 32).transpose(1, 2, 0)).resize((28, 28))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    return [*map(png, rows[:3]), buffer.getvalue(), *map(png, rows[4:])]


ROWS = fake_batch(20, 0)[0]


@pytest.mark.parametrize("make, words", [
    (lambda tmp: _one_file(tmp, labels=[*range(10), 10, *range(9)]), "label 10 of row 10 is outside 0-9"),
    (lambda tmp: _one_file(tmp, labels=[-1, *[0] * 19]), "label -1 of row 0 is outside 0-9"),
    (lambda tmp: _one_file(tmp, labels=[0, None, *[0] * 18]), "label of row 1 is missing"),
    (lambda tmp: _one_file(tmp, pixels=_small_image(ROWS)), "image of row 3 is 28x28 RGB, expected 32x32 RGB"),
    (lambda tmp: _one_file(tmp, pixels=_gray_image(ROWS)), "image of row 0 is 32x32 L, expected 32x32 RGB"),
    (lambda tmp: _one_file(tmp, pixels=[b"not a png", *map(png, ROWS[1:])]), "image of row 0 is not a readable image"),
    (lambda tmp: _one_file(tmp, label_column="labels"), "no column 'label'"),
    (lambda tmp: _one_file(tmp, image_column="image"), "no column 'img'"),
])
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
    assert str(error.value) == (f"{folder / 'train-*.parquet'} (2 files): 100 rows, CIFAR-10's train split holds 50,000 "
                                "(truncated or wrong file)")
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
