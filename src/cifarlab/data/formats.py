"""CIFAR-10's official file formats: find a data set on disk, verify it, read it into uint8 tensors.

Both official layouts are read:
- binary  (`cifar-10-batches-bin/*.bin`): records of 1 label byte + 3,072 pixel bytes
  (1,024 red, 1,024 green, 1,024 blue, each plane row-major 32x32);
- python  (`cifar-10-batches-py/`): pickled dicts, read with a restricted unpickler that builds
  plain lists/dicts and inert stand-ins for numpy's arrays, never any other object; the uint8
  array is then made here from the checked raw bytes.

Every official file, training and test, holds exactly 10,000 records; anything else, and any file
that cannot be read or unpickled, is a one-line DataError that names the file.

Either may sit in a folder or in the official `.tar.gz` archive (download.py fetches one,
cifar10.py's load_cifar10 puts finding, reading and downloading together).

A folder of the Hugging Face `cifar10` data set's parquet files (`train-*.parquet`,
`test-*.parquet`, in `plain_text/` or the folder itself) is found here too, and read by parquet.py.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarlab.errors import CifarlabError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Published per-channel statistics of the 50,000 training images, pixels scaled to [0, 1].
MEAN = (0.49139968, 0.48215841, 0.44653091)
STD = (0.24703223, 0.24348513, 0.26158784)

RECORD_BYTES = 1 + 3 * 32 * 32
# Every official batch file, the five training files and the test file alike, holds exactly this many
# records; one cut short at a record boundary would otherwise train or test on fewer images unnoticed.
RECORDS_PER_FILE = 10_000
# The test suite trains on tiny fake data sets (tens of images per file), also in torchrun and CLI
# subprocesses that no argument reaches; tests/conftest.py sets this variable to "1" to let any
# positive record count through. It is not an option for real work and is not documented as one.
ANY_RECORD_COUNT_ENV = "CIFARLAB_TEST_ANY_RECORD_COUNT"
BIN_DIR, PY_DIR = "cifar-10-batches-bin", "cifar-10-batches-py"
BIN_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
PY_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
BIN_TEST, PY_TEST = "test_batch.bin", "test_batch"
TRAIN_IMAGES, TEST_IMAGES = 5 * RECORDS_PER_FILE, RECORDS_PER_FILE
# The Hugging Face `cifar10` data set: its parquet files, sharded train-00000-of-00001.parquet and
# so on, lie in plain_text/ (its configuration's name) or in the folder given.
HF_DIR = "plain_text"
PARQUET_SPLITS = {"train": "train-*.parquet", "test": "test-*.parquet"}


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str
    filename: str


BINARY_ARCHIVE = Archive(
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "c32a1d4ab5d03f1284b67883e8d87530",
    "cifar-10-binary.tar.gz",
)
PYTHON_ARCHIVE = Archive(
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
    "cifar-10-python.tar.gz",
)


class DataError(CifarlabError):
    """A data set that is missing, malformed or cannot be fetched; the message is one line."""


@dataclass(frozen=True)
class Cifar10:
    """The whole data set as uint8 NCHW image tensors and int64 label tensors."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    source: str


# ---------------------------------------------------------------- locating


def default_data_dir() -> Path:
    """`CIFARLAB_DATA` if set, else `~/.cache/cifarlab`."""
    env = os.environ.get("CIFARLAB_DATA")
    return Path(env) if env else Path.home() / ".cache" / "cifarlab"


def find_dataset(root: Path) -> Path | None:
    """The batches folder or archive under `root` (or `root` itself), or None."""
    root = Path(root)
    candidates = [root / BIN_DIR, root / PY_DIR, root / HF_DIR, root, root / BINARY_ARCHIVE.filename, root / PYTHON_ARCHIVE.filename]
    try:
        if root.is_file():
            return root
        for path in candidates:
            if path.is_dir():
                if _layout(path) is not None or has_parquet(path):
                    return path
                _check_listable(path)
            if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
                return path
    except OSError as e:  # a name too long, a folder that cannot be searched
        raise DataError(f"{root}: cannot look for CIFAR-10 there ({e.strerror or _one_line(e)})") from None
    return None


def _check_listable(folder: Path) -> None:
    """A folder that cannot be listed hides its batch files: it must not read as "no data" (and be downloaded over)."""
    try:
        os.scandir(folder).close()
    except OSError as e:
        reason = e.strerror or _one_line(e)
        raise DataError(f"{folder}: cannot be read ({reason}); not downloading CIFAR-10 into a folder that cannot be read") from None


def _layout(folder: Path) -> tuple[list[str], str] | None:
    """(training file names, test file name) of the layout whose batch files `folder` holds, or None.

    Any one batch file is enough, so a folder that lost its test file is still found, and then named
    as incomplete, rather than taken for no data at all (and downloaded over).
    """
    for train_names, test_name in ((BIN_TRAIN, BIN_TEST), (PY_TRAIN, PY_TEST)):
        if any(os.path.lexists(folder / name) for name in [*train_names, test_name]):
            return train_names, test_name
    return None


def parquet_files(folder: Path, split: str) -> list[Path]:
    """A split's parquet shards in `folder`, in order."""
    return sorted(Path(folder).glob(PARQUET_SPLITS[split]))


def has_parquet(folder: Path) -> bool:
    """Whether `folder` holds parquet files of either split: one is enough to be found, and then
    named as incomplete, as with the official files."""
    return any(parquet_files(folder, split) for split in PARQUET_SPLITS)


def is_parquet_folder(folder: Path) -> bool:
    """A folder of parquet files and no official batch files (those win where both are)."""
    return _layout(folder) is None and has_parquet(folder)


def required_count(official: int) -> int | None:
    """The record count a file or split must have: the official one, or any (None) in the test suite."""
    return None if os.environ.get(ANY_RECORD_COUNT_ENV) == "1" else official


# ---------------------------------------------------------------- reading


def read_folder(folder: Path) -> Cifar10:
    """Read a `cifar-10-batches-bin` or `cifar-10-batches-py` folder; each file must hold `RECORDS_PER_FILE` records."""
    folder = Path(folder)
    layout = _layout(folder)
    if layout is None:
        raise DataError(f"{folder}: no CIFAR-10 batch files (data_batch_1 to 5 and test_batch, binary or python layout)")
    train_names, test_name = layout
    missing = [n for n in [*train_names, test_name] if not os.path.lexists(folder / n)]
    if missing:
        raise DataError(f"{folder}: incomplete CIFAR-10 folder, missing {', '.join(missing)}")
    binary = test_name == BIN_TEST
    reader = read_binary_batch if binary else read_python_batch
    records = required_count(RECORDS_PER_FILE)
    parts = [reader(folder / n, records) for n in train_names]
    test_x, test_y = reader(folder / test_name, records)
    return Cifar10(
        train_images=torch.cat([p[0] for p in parts]),
        train_labels=torch.cat([p[1] for p in parts]),
        test_images=test_x,
        test_labels=test_y,
        classes=_read_class_names(folder, binary),
        source=str(folder),
    )


def read_binary_batch(path: Path, records: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one binary batch file; it must hold `records` records (None: any number)."""
    raw = _read_bytes(Path(path))
    if len(raw) == 0 or len(raw) % RECORD_BYTES:
        raise DataError(f"{path}: {len(raw)} bytes is not a whole number of {RECORD_BYTES}-byte records (truncated or wrong file)")
    _check_count(path, len(raw) // RECORD_BYTES, records)
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = rows[:, 0].astype(np.int64)
    images = rows[:, 1:].reshape(-1, 3, 32, 32)
    return _checked(path, images, labels)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:  # a folder in a file's place, no permission, an I/O error
        raise DataError(f"{path}: cannot read ({e.strerror or _one_line(e)})") from None


def _check_count(path: Path, count: int, records: int | None) -> None:
    if records is not None and count != records:
        found = f"{count:,} record" + ("" if count == 1 else "s")
        raise DataError(f"{path}: {found}, an official CIFAR-10 batch file holds {records:,} (truncated or wrong file)")


class _PickledArray:
    """What a pickle asks numpy to build, kept as inert data: numpy never sees a file's arguments.

    numpy pickles an array as `_reconstruct(ndarray, (0,), b"b")` and then sets its state to
    (version, shape, dtype, Fortran order, raw bytes); `_uint8_matrix` checks that state and only
    then builds the array itself, from the raw bytes.
    """

    state = None  # also when the pickle makes one without calling __init__ (NEWOBJ)

    def __init__(self, *args):
        pass

    def __setstate__(self, state):
        self.state = state


class _PickledDtype:
    """`numpy.dtype(*args)` as inert data; only args naming uint8 ('u1') are accepted later."""

    args: tuple = ()

    def __init__(self, *args):
        self.args = args

    def __setstate__(self, state):
        pass  # byte order and alignment: nothing to choose for a one-byte type


def _latin1_encode(text, encoding) -> bytes:
    """`_codecs.encode` as Python 3 writes bytes in protocol 2: latin-1 only, no other codec."""
    if encoding != "latin1":
        raise pickle.UnpicklingError("refusing a codec other than latin1")
    return codecs.encode(text, "latin1")


# The pure-Python unpickler, not the C one: given a memo index from the file, the C one allocates and
# zeroes eight bytes per index up front (a 10-byte pickle costs 1.5 GB), the Python one keeps a dict.
class _RestrictedUnpickler(pickle._Unpickler):
    """Builds plain containers and the inert stand-ins above only: a batch file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _PickledArray,
        ("numpy._core.multiarray", "_reconstruct"): _PickledArray,
        ("numpy", "ndarray"): _PickledArray,
        ("numpy", "dtype"): _PickledDtype,
        ("_codecs", "encode"): _latin1_encode,  # protocol-2 pickles made by Python 3 encode raw bytes with it
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[module, name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def load_build(self):
        # BUILD sets state on the object below it, through setattr when it has no __setstate__: only
        # the stand-ins take state, so a file cannot set attributes on the allowed classes or function.
        if len(self.stack) < 2 or not isinstance(self.stack[-2], (_PickledArray, _PickledDtype)):
            raise pickle.UnpicklingError("BUILD on an object that takes no state")
        super().load_build()

    # typeshed types pickle's private dispatch table for the C Unpickler's methods
    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build}  # type: ignore[dict-item]


def _unpickle(path: Path) -> dict:
    # Whole file first: a length field read from a BytesIO allocates at most the bytes left, where a
    # file reader would allocate the length the file claims before finding it is not there.
    raw = _read_bytes(path)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    # A malformed pickle fails inside pickle's opcodes with any exception at all (AttributeError,
    # IndexError, KeyError, OverflowError, MemoryError...); all mean one thing: not a python batch.
    except Exception as e:
        reason = f"{type(e).__name__}: {_one_line(e)}" if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a readable CIFAR-10 python batch ({reason})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return obj


def _field(batch: dict, name: str):
    """batch[name], whether the pickle keyed it by bytes (Python 2, the official files) or by str."""
    key = name.encode()
    return batch[key] if key in batch else batch.get(name)


def read_python_batch(path: Path, records: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one python batch file; it must hold `records` records (None: any number)."""
    batch = _unpickle(Path(path))
    data, labels = _field(batch, "data"), _field(batch, "labels")
    if data is None or labels is None:
        raise DataError(f"{path}: python batch lacks 'data' or 'labels'")
    if not isinstance(labels, list):
        raise DataError(f"{path}: 'labels' is not a list of integers 0-9 (found {type(labels).__name__})")
    images = _uint8_matrix(path, data, len(labels))
    _check_count(path, len(labels), records)
    return _checked(path, images.reshape(-1, 3, 32, 32), _label_array(path, labels))


def _uint8_matrix(path: Path, data, rows: int) -> np.ndarray:
    """The (rows, 3072) uint8 array that a pickled numpy array describes, built from its raw bytes."""
    state = data.state if isinstance(data, _PickledArray) else None
    if isinstance(state, tuple) and len(state) == 5:
        state = state[1:]  # numpy's leading state version
    if not isinstance(state, tuple) or len(state) != 4:
        raise DataError(f"{path}: 'data' is not a numpy array (found {type(data).__name__})")
    shape, dtype, fortran, raw = state
    if not isinstance(dtype, _PickledDtype) or dtype.args[:1] not in (("u1",), (b"u1",)):
        raise DataError(f"{path}: 'data' is not a uint8 array")
    if not isinstance(fortran, bool) or not isinstance(raw, bytes):
        raise DataError(f"{path}: 'data' is a malformed numpy array")
    if shape != (rows, 3072) or len(raw) != rows * 3072:
        raise DataError(f"{path}: data has shape {_shape_text(shape)} and {len(raw):,} bytes, expected ({rows}, 3072) uint8")
    return np.frombuffer(raw, dtype=np.uint8).reshape(rows, 3072, order="F" if fortran else "C")


def _shape_text(shape) -> str:
    """A pickled shape for a message; a crafted one may hold anything, of any size."""
    small = isinstance(shape, tuple) and len(shape) <= 8 and all(type(d) is int and abs(d) < 10**12 for d in shape)
    return str(shape) if small else "unreadable"


def _label_array(path: Path, labels: list) -> np.ndarray:
    """The labels as int64, each first checked in Python: numpy would overflow on big ints and parse strings."""
    for i, label in enumerate(labels):
        if type(label) is not int:  # bool and other int look-alikes too: the official files hold plain ints
            raise DataError(f"{path}: label of record {i} is a {type(label).__name__}, expected an integer 0-9")
        if not 0 <= label <= 9:
            shown = label if abs(label) < 10**9 else "with more than 9 digits"  # str() of a huge int is slow, or refused
            raise DataError(f"{path}: label {shown} of record {i} is outside 0-9")
    return np.array(labels, dtype=np.int64)


def _checked(path: Path, images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    bad = (labels < 0) | (labels > 9)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: label {int(labels[i])} of record {i} is outside 0-9")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


def _read_class_names(folder: Path, binary: bool) -> tuple[str, ...]:
    """The ten names in the folder's meta file, or CLASSES when it is absent or does not list ten."""
    meta = folder / ("batches.meta.txt" if binary else "batches.meta")
    if not meta.is_file():
        return CLASSES
    if binary:
        names = _decoded(meta, _read_bytes(meta)).splitlines()
    else:
        names = _field(_unpickle(meta), "label_names") or []
        if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
            raise DataError(f"{meta}: 'label_names' is not a list of names (found {type(names).__name__})")
        names = [_decoded(meta, n) if isinstance(n, bytes) else n for n in names]
    names = [n.strip() for n in names if n.strip()]
    return tuple(names) if len(names) == 10 else CLASSES


def _decoded(path: Path, raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({_one_line(e)})") from None


def _one_line(error: BaseException) -> str:
    """An exception's message on one short line: it becomes part of a one-line DataError."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _read_archive(archive: Path) -> Cifar10:
    with tempfile.TemporaryDirectory(prefix="cifarlab-") as tmp:
        _safe_extract(archive, Path(tmp))
        found = find_dataset(Path(tmp))
        if found is None or found.is_file():
            raise DataError(f"{archive}: archive holds neither {BIN_DIR}/ nor {PY_DIR}/")
        data = read_folder(found)
    return Cifar10(**{**data.__dict__, "source": str(archive)})


def _safe_extract(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")  # refuses absolute paths, '..' and links out
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:  # zlib.error: corrupt compressed data
        raise DataError(f"{archive}: cannot extract ({_one_line(e)})") from None
