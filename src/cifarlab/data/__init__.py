"""CIFAR-10: the official files (formats), Hugging Face parquet files (parquet), their download, the
validation split and augmentation.

The names most code needs are importable from here: `from cifarlab.data import load_cifar10, MEAN, STD`.
"""

from cifarlab.data.cifar10 import load_cifar10
from cifarlab.data.download import archive_names, download_cifar10, md5sum
from cifarlab.data.formats import (
    ANY_RECORD_COUNT_ENV,
    BIN_DIR,
    BIN_TEST,
    BIN_TRAIN,
    BINARY_ARCHIVE,
    CLASSES,
    HF_DIR,
    MEAN,
    PARQUET_SPLITS,
    PY_DIR,
    PY_TEST,
    PY_TRAIN,
    PYTHON_ARCHIVE,
    RECORD_BYTES,
    RECORDS_PER_FILE,
    STD,
    TEST_IMAGES,
    TRAIN_IMAGES,
    Archive,
    Cifar10,
    DataError,
    default_data_dir,
    find_dataset,
    read_binary_batch,
    read_folder,
    read_python_batch,
)
from cifarlab.data.parquet import read_parquet_folder
from cifarlab.data.splits import split_train_val

__all__ = [
    "ANY_RECORD_COUNT_ENV",
    "BIN_DIR",
    "BIN_TEST",
    "BIN_TRAIN",
    "BINARY_ARCHIVE",
    "CLASSES",
    "HF_DIR",
    "MEAN",
    "PARQUET_SPLITS",
    "PY_DIR",
    "PY_TEST",
    "PY_TRAIN",
    "PYTHON_ARCHIVE",
    "RECORD_BYTES",
    "RECORDS_PER_FILE",
    "STD",
    "TEST_IMAGES",
    "TRAIN_IMAGES",
    "Archive",
    "Cifar10",
    "DataError",
    "archive_names",
    "default_data_dir",
    "download_cifar10",
    "find_dataset",
    "load_cifar10",
    "md5sum",
    "read_binary_batch",
    "read_folder",
    "read_parquet_folder",
    "read_python_batch",
    "split_train_val",
]
