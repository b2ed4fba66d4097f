"""load_cifar10: the data set from a folder, archive or parquet files, downloaded first when it is not there."""

from __future__ import annotations

from pathlib import Path

from cifarlab.data.download import download_cifar10
from cifarlab.data.formats import (
    BIN_DIR,
    BINARY_ARCHIVE,
    PARQUET_SPLITS,
    PY_DIR,
    Archive,
    Cifar10,
    DataError,
    _read_archive,
    default_data_dir,
    find_dataset,
    is_parquet_folder,
    read_folder,
)
from cifarlab.data.parquet import read_parquet_folder


def load_cifar10(root: Path | str | None = None, download: bool = True, archive: Archive = BINARY_ARCHIVE) -> Cifar10:
    """Read CIFAR-10 from `root` (default: `default_data_dir()`), downloading it if absent."""
    root = Path(root) if root is not None else default_data_dir()
    found = find_dataset(root)
    if found is None:
        if not download:
            parquet = " or ".join(PARQUET_SPLITS.values())
            raise DataError(f"no CIFAR-10 data in {root}: expected {BIN_DIR}/, {PY_DIR}/, an official .tar.gz archive or {parquet} files")
        found = download_cifar10(root, archive)
    if found.is_file():
        return _read_archive(found)
    return read_parquet_folder(found) if is_parquet_folder(found) else read_folder(found)
