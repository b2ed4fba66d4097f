"""Download the official CIFAR-10 archive: its published MD5 is checked and it is extracted and
read in a staging folder before it is moved into place, so a partial or corrupt download never
becomes the data set."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from cifarlab.data.formats import (
    BIN_DIR,
    BINARY_ARCHIVE,
    PY_DIR,
    PYTHON_ARCHIVE,
    Archive,
    DataError,
    _one_line,
    _safe_extract,
    find_dataset,
    read_folder,
)


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unreadable_folder(root: Path) -> str | None:
    """Why the folder `root` cannot be read (listed), or None: it can, or there is no folder there.

    A folder that cannot be listed hides what it holds (its parquet files, say): it must not read
    as "no data" and then be downloaded into.
    """
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except (FileNotFoundError, NotADirectoryError):
        return None  # created on download, or a file (an archive) that is read as one
    except OSError as e:
        return f"cannot be read ({e.strerror or _one_line(e)})"
    return None


def download_cifar10(root: Path, archive: Archive = BINARY_ARCHIVE, progress: bool = True) -> Path:
    """Download, verify and extract the official archive into `root`; returns the batches folder.

    Everything happens in a temporary folder inside `root`; only a verified, fully extracted
    folder is renamed into place, so an interrupted or corrupt download leaves nothing behind.
    """
    root = Path(root)
    problem = unreadable_folder(root)
    if problem:
        raise DataError(f"{root}: {problem}; not downloading CIFAR-10 into a folder that cannot be read")
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    except OSError as e:
        raise DataError(f"no CIFAR-10 data in {root} and cannot create it ({e})") from None
    try:
        target = staging / archive.filename
        _fetch(archive.url, target, progress)
        digest = md5sum(target)
        if digest != archive.md5:
            raise DataError(f"{archive.url}: MD5 {digest} does not match the published {archive.md5}; download discarded")
        _safe_extract(target, staging / "x")
        found = find_dataset(staging / "x")
        if found is None or found.is_file():
            raise DataError(f"{archive.url}: archive holds neither {BIN_DIR}/ nor {PY_DIR}/")
        read_folder(found)  # verify before it becomes the data set
        final = root / found.name
        try:
            os.replace(found, final)
        except OSError as e:  # a non-empty folder of that name that holds no batch files
            raise DataError(f"cannot move the downloaded data into {final} ({e.strerror or _one_line(e)})") from None
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch(url: str, target: Path, progress: bool) -> None:
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-10", disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except OSError as e:  # URLError, timeouts and refused connections are all OSErrors
        raise DataError(
            f"no CIFAR-10 data in {target.parent.parent} and the download from {url} failed ({e}); "
            f"put {BIN_DIR}/ or {archive_names()} there, or point --data-dir / CIFARLAB_DATA at it"
        ) from None


def archive_names() -> str:
    return f"{BINARY_ARCHIVE.filename} / {PYTHON_ARCHIVE.filename}"
