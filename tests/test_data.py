import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab.data import (
    ANY_RECORD_COUNT_ENV,
    CLASSES,
    RECORD_BYTES,
    RECORDS_PER_FILE,
    Archive,
    DataError,
    load_cifar10,
    md5sum,
    read_binary_batch,
    read_python_batch,
    split_train_val,
)
from conftest import fake_batch, write_binary, write_python


def test_binary_and_python_layouts_read_the_same_images(tmp_path):
    write_binary(tmp_path / "b")
    write_python(tmp_path / "p")
    b, p = load_cifar10(tmp_path / "b", download=False), load_cifar10(tmp_path / "p", download=False)
    assert b.train_images.shape == (100, 3, 32, 32) and b.train_images.dtype == torch.uint8
    assert b.test_images.shape == (20, 3, 32, 32)
    assert torch.equal(b.train_images, p.train_images) and torch.equal(b.train_labels, p.train_labels)
    assert b.classes == p.classes == CLASSES


def test_binary_channel_layout_is_planar_rgb(tmp_path):
    images, labels = fake_batch(3, 0)
    records = np.concatenate([labels.astype(np.uint8)[:, None], images], axis=1)
    (tmp_path / "x.bin").write_bytes(records.tobytes())
    x, y = read_binary_batch(tmp_path / "x.bin")
    assert x[1, 2, 0, 5] == images[1, 2 * 1024 + 5]  # blue plane, row 0, column 5
    assert x[2, 0, 3, 1] == images[2, 3 * 32 + 1]  # red plane, row 3, column 1
    assert y.tolist() == [0, 1, 2]


def test_reads_from_official_archive(tmp_path):
    write_binary(tmp_path / "src")
    with tarfile.open(tmp_path / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    data = load_cifar10(tmp_path / "cifar-10-binary.tar.gz", download=False)
    assert len(data.train_labels) == 100


def test_truncated_binary_file_names_the_file(tiny_binary):
    f = tiny_binary / "cifar-10-batches-bin" / "data_batch_3.bin"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="data_batch_3.bin.*truncated"):
        load_cifar10(tiny_binary, download=False)


def test_empty_binary_file_is_an_error(tiny_binary):
    (tiny_binary / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(b"")
    with pytest.raises(DataError, match="test_batch.bin"):
        load_cifar10(tiny_binary, download=False)


def test_label_outside_0_9_names_file_and_record(tiny_binary):
    f = tiny_binary / "cifar-10-batches-bin" / "data_batch_2.bin"
    raw = bytearray(f.read_bytes())
    raw[3073 * 4] = 12
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="data_batch_2.bin: label 12 of record 4"):
        load_cifar10(tiny_binary, download=False)


def test_missing_batches_are_listed(tiny_binary):
    (tiny_binary / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    (tiny_binary / "cifar-10-batches-bin" / "data_batch_5.bin").unlink()
    with pytest.raises(DataError, match="missing data_batch_4.bin, data_batch_5.bin"):
        load_cifar10(tiny_binary, download=False)


def test_python_bad_label_and_shape(tmp_path):
    images, labels = fake_batch(4, 0)
    with open(tmp_path / "b1", "wb") as f:
        pickle.dump({b"data": images, b"labels": [0, 1, 10, 3]}, f, protocol=2)
    with pytest.raises(DataError, match="b1: label 10"):
        read_python_batch(tmp_path / "b1")
    with open(tmp_path / "b2", "wb") as f:
        pickle.dump({b"data": images[:, :100], b"labels": labels.tolist()}, f, protocol=2)
    with pytest.raises(DataError, match="b2: data has shape"):
        read_python_batch(tmp_path / "b2")


def test_python_truncated_file(tiny_python):
    f = tiny_python / "cifar-10-batches-py" / "data_batch_1"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar10(tiny_python, download=False)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_restricted_unpickler_refuses_arbitrary_objects(tmp_path):
    with open(tmp_path / "evil", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="refusing to load (__builtin__|builtins).print"):
        read_python_batch(tmp_path / "evil")


def test_missing_data_without_download(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 data in"):
        load_cifar10(tmp_path / "nothing", download=False)


def test_split_is_deterministic_balanced_and_disjoint():
    labels = torch.arange(1000) % 10
    tr, va = split_train_val(labels, 100)
    tr2, va2 = split_train_val(labels, 100)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert len(va) == 100 and len(tr) == 900
    assert torch.bincount(labels[va]).tolist() == [10] * 10
    assert not set(tr.tolist()) & set(va.tolist())
    assert set(tr.tolist()) | set(va.tolist()) == set(range(1000))


def test_split_uneven_and_zero():
    labels = torch.arange(1000) % 10
    assert torch.bincount(labels[split_train_val(labels, 13)[1]], minlength=10).tolist() == [2, 2, 2] + [1] * 7
    tr, va = split_train_val(labels, 0)
    assert len(va) == 0 and len(tr) == 1000
    with pytest.raises(DataError, match="val-size"):
        split_train_val(labels, 1000)


# ---------------------------------------------------------------- record counts


@pytest.mark.parametrize("write", [write_binary, write_python])
def test_every_official_file_must_hold_10000_records(tmp_path, monkeypatch, write):
    monkeypatch.delenv(ANY_RECORD_COUNT_ENV)  # as outside the test suite
    write(tmp_path)
    with pytest.raises(DataError, match=r"data_batch_1(\.bin)?: 20 records, an official CIFAR-10 batch file holds 10,000"):
        load_cifar10(tmp_path, download=False)


def test_binary_file_cut_at_a_record_boundary_is_refused(tmp_path):
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(bytes(RECORD_BYTES * RECORDS_PER_FILE))
    assert len(read_binary_batch(path, RECORDS_PER_FILE)[1]) == RECORDS_PER_FILE
    os.truncate(path, 15_365_000)  # the cut: 5,000 whole records
    with pytest.raises(DataError, match="data_batch_2.bin: 5,000 records"):
        read_binary_batch(path, RECORDS_PER_FILE)
    os.truncate(path, RECORD_BYTES)
    with pytest.raises(DataError, match="data_batch_2.bin: 1 record,"):
        read_binary_batch(path, RECORDS_PER_FILE)


def real_copy(real_data: Path, into: Path) -> Path:
    """The real binary batches as links in a new folder, so one file can be replaced."""
    folder = into / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for f in (real_data / "cifar-10-batches-bin").iterdir():
        (folder / f.name).symlink_to(f)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name, keep, message", [
    ("data_batch_2.bin", 15_365_000, "data_batch_2.bin: 5,000 records"),  # trained on 45,000 images before
    ("test_batch.bin", RECORD_BYTES, "test_batch.bin: 1 record,"),  # tested on 1 image before
])
def test_real_data_cut_at_a_record_boundary_is_refused(real_data, tmp_path, monkeypatch, name, keep, message):
    monkeypatch.delenv(ANY_RECORD_COUNT_ENV)
    assert len(load_cifar10(real_data, download=False).train_labels) == 50_000  # the whole set passes
    folder = real_copy(real_data, tmp_path)
    with open(folder / name, "rb") as f:
        cut = f.read(keep)
    (folder / name).unlink()
    (folder / name).write_bytes(cut)
    with pytest.raises(DataError, match=message):
        load_cifar10(tmp_path, download=False)


# ---------------------------------------------------------------- missing and unreadable files


@pytest.mark.parametrize("write, test_name", [(write_binary, "test_batch.bin"), (write_python, "test_batch")])
def test_missing_test_batch_is_named(tmp_path, write, test_name):
    (write(tmp_path) / test_name).unlink()
    with pytest.raises(DataError, match=f"incomplete CIFAR-10 folder, missing {test_name}$"):
        load_cifar10(tmp_path, download=False)


@pytest.mark.parametrize("write, name", [
    (write_binary, "data_batch_1.bin"), (write_binary, "test_batch.bin"), (write_python, "data_batch_3"), (write_python, "test_batch"),
])
def test_folder_in_place_of_a_batch_file(tmp_path, write, name):
    folder = write(tmp_path)
    (folder / name).unlink()
    (folder / name).mkdir()
    with pytest.raises(DataError, match=f"{name}: cannot read \\(Is a directory\\)"):
        load_cifar10(tmp_path, download=False)


def test_file_without_read_permission(tiny_binary):
    path = tiny_binary / "cifar-10-batches-bin" / "data_batch_4.bin"
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("this user (root) reads files without read permission")
    with pytest.raises(DataError, match="data_batch_4.bin: cannot read \\(Permission denied\\)"):
        load_cifar10(tiny_binary, download=False)


def test_data_dir_that_cannot_be_searched(tmp_path):
    with pytest.raises(DataError, match="cannot look for CIFAR-10 there \\(File name too long\\)"):
        load_cifar10(tmp_path / ("x" * 300), download=False)


def test_download_into_a_folder_of_other_files_is_an_error(tmp_path):
    write_binary(tmp_path / "src")
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    (tmp_path / "cache" / "cifar-10-batches-bin").mkdir(parents=True)
    (tmp_path / "cache" / "cifar-10-batches-bin" / "notes.txt").write_text("not CIFAR-10")
    with pytest.raises(DataError, match="cannot move the downloaded data into .*cifar-10-batches-bin"):
        load_cifar10(tmp_path / "cache", archive=Archive(archive.as_uri(), md5sum(archive), archive.name))


def test_archive_corrupt_past_its_first_member_header(tmp_path):
    """A gzip stream that turns bad after the tar header: zlib.error used to escape the extraction."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        info.size = 2 * RECORD_BYTES
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    bad_member = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 64  # a gzip header, then no valid deflate block
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(gzip.compress(buf.getvalue()[:1024], mtime=0) + bad_member)
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz: cannot extract"):
        load_cifar10(tmp_path, download=False)
