"""The Hugging Face `cifar10` data set's parquet files, read into the same Cifar10 as the official files.

The data set's repository holds `plain_text/train-00000-of-00001.parquet` and
`plain_text/test-00000-of-00001.parquet` (more shards are read in order, `train-*.parquet`), each
with two columns: `img`, a struct whose `bytes` are a PNG file, and `label`, an integer 0-9.

The checks are the official files': the training split holds exactly 50,000 rows and the test
split 10,000, every label is an integer 0-9, every image decodes to 32x32 RGB. Anything else is
a one-line DataError naming the file (and row). Rows are counted from the files' footers before
any image is decoded, so a wrong file fails at once, not minutes in.

pyarrow reads the files and Pillow decodes the PNGs; both are the `parquet` extra.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from cifarlab.data.formats import (
    CLASSES,
    PARQUET_SPLITS,
    TEST_IMAGES,
    TRAIN_IMAGES,
    Cifar10,
    DataError,
    _one_line,
    parquet_files,
    required_count,
)

IMAGE_COLUMN, LABEL_COLUMN, BYTES_FIELD = "img", "label", "bytes"
SIZE = 32
BATCH_ROWS = 1024  # rows decoded at a time: a few MB of PNGs in memory, not the whole file's


def _require_packages():
    """pyarrow.parquet and PIL.Image, or a DataError saying which extra to install."""
    try:
        import pyarrow.parquet as pq
        from PIL import Image
    except ImportError as e:
        raise DataError(f"reading parquet files needs {e.name}: pip install 'cifarlab[parquet]'") from None
    return pq, Image


def read_parquet_folder(folder: Path | str) -> Cifar10:
    """Both splits of a folder of Hugging Face CIFAR-10 parquet files, checked."""
    folder = Path(folder)
    # Both splits' files opened and counted before any image is decoded: a wrong test file
    # fails at once, not after 50,000 training images.
    train = open_split(folder, "train", TRAIN_IMAGES)
    test = open_split(folder, "test", TEST_IMAGES)
    train_images, train_labels = read_split(train)
    test_images, test_labels = read_split(test)
    return Cifar10(train_images, train_labels, test_images, test_labels, CLASSES, str(folder))


def open_split(folder: Path, split: str, official: int) -> list[tuple[Path, object]]:
    """(path, ParquetFile) of a split's shards, their columns and total row count checked."""
    pq, _ = _require_packages()
    files = parquet_files(folder, split)
    if not files:
        raise DataError(f"{folder}: incomplete Hugging Face CIFAR-10 folder, no {PARQUET_SPLITS[split]} file")
    opened = [(path, open_checked(pq, path)) for path in files]
    _check_rows(folder, split, files, sum(parquet.metadata.num_rows for _, parquet in opened), required_count(official))
    return opened


def read_split(opened: list[tuple[Path, object]]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, 32, 32) and int64 labels of one split's shards, in order."""
    parts = [read_file(path, parquet) for path, parquet in opened]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def open_checked(pq, path: Path):
    """A ParquetFile whose schema has the data set's columns, of the data set's types."""
    import pyarrow as pa

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # ArrowInvalid (not parquet), OSError (unreadable): not a usable file either way
        raise DataError(f"{path}: not a readable parquet file ({_one_line(e)})") from None
    schema = parquet.schema_arrow
    missing = [c for c in (IMAGE_COLUMN, LABEL_COLUMN) if c not in schema.names]
    if missing:
        raise DataError(f"{path}: no column {', '.join(map(repr, missing))} (Hugging Face cifar10 has 'img' and 'label')")
    image_type, label_type = schema.field(IMAGE_COLUMN).type, schema.field(LABEL_COLUMN).type
    if not (
        pa.types.is_struct(image_type) and image_type.get_field_index(BYTES_FIELD) >= 0 and pa.types.is_binary(image_type.field(BYTES_FIELD).type)
    ):
        raise DataError(f"{path}: column 'img' should be an image (a struct of PNG 'bytes'), found {image_type}")
    if not pa.types.is_integer(label_type):
        raise DataError(f"{path}: column 'label' should hold integers 0-9, found {label_type}")
    return parquet


def _check_rows(folder: Path, split: str, files: list[Path], rows: int, required: int | None) -> None:
    where = files[0] if len(files) == 1 else f"{folder / PARQUET_SPLITS[split]} ({len(files)} files)"
    if rows == 0 or (required is not None and rows != required):
        expected = f"CIFAR-10's {split} split holds {required:,}" if required is not None else "expected at least one"
        raise DataError(f"{where}: {rows:,} row{'' if rows == 1 else 's'}, {expected} (truncated or wrong file)")


def read_file(path: Path, parquet) -> tuple[torch.Tensor, torch.Tensor]:
    """One file's images and labels, batch by batch; each row checked."""
    _, Image = _require_packages()
    rows = parquet.metadata.num_rows
    images = np.empty((rows, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.empty(rows, dtype=np.int64)
    start = 0
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=[IMAGE_COLUMN, LABEL_COLUMN]):
        pngs = batch.column(IMAGE_COLUMN).field(BYTES_FIELD).to_pylist()
        labels[start : start + len(pngs)] = checked_labels(path, batch.column(LABEL_COLUMN), start)
        for i, png in enumerate(pngs):
            images[start + i] = decode_png(Image, path, start + i, png)
        start += len(pngs)
    # HWC as PNGs store pixels, CHW as the official files and every model take them
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels)


def checked_labels(path: Path, column, first_row: int) -> np.ndarray:
    """A batch's labels as int64, or DataError naming the first missing or out-of-range one's row."""
    if column.null_count:
        row = first_row + column.is_null().to_pylist().index(True)
        raise DataError(f"{path}: label of row {row} is missing, expected an integer 0-9")
    labels = column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise DataError(f"{path}: label {column[int(bad[0])].as_py()} of row {first_row + int(bad[0])} is outside 0-9")
    return labels


def decode_png(Image, path: Path, row: int, data: bytes | None) -> np.ndarray:
    """One image's pixels (32, 32, 3) uint8; its size and mode are read from the header, before decoding."""
    if data is None:
        raise DataError(f"{path}: image of row {row} has no bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (SIZE, SIZE) or im.mode != "RGB":
                raise DataError(f"{path}: image of row {row} is {im.size[0]}x{im.size[1]} {im.mode}, expected 32x32 RGB")
            return np.asarray(im)
    except DataError:
        raise
    except Exception as e:  # Pillow raises many kinds (UnidentifiedImageError, OSError, SyntaxError) for one thing
        raise DataError(f"{path}: image of row {row} is not a readable image ({_one_line(e)})") from None
