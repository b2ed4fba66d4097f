import gzip
import io
import os
import pickle
import pickletools
import random
import struct
import tarfile
import tracemalloc
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
@pytest.mark.parametrize(
    "name, keep, message",
    [
        ("data_batch_2.bin", 15_365_000, "data_batch_2.bin: 5,000 records"),  # trained on 45,000 images before
        ("test_batch.bin", RECORD_BYTES, "test_batch.bin: 1 record,"),  # tested on 1 image before
    ],
)
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


@pytest.mark.parametrize(
    "write, name",
    [
        (write_binary, "data_batch_1.bin"),
        (write_binary, "test_batch.bin"),
        (write_python, "data_batch_3"),
        (write_python, "test_batch"),
    ],
)
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


# ---------------------------------------------------------------- malformed meta and python batches


def test_binary_meta_file_that_does_not_decode(tiny_binary):
    (tiny_binary / "cifar-10-batches-bin" / "batches.meta.txt").write_bytes(b"\xff\xfeairplane\n")
    with pytest.raises(DataError, match="batches.meta.txt: not UTF-8 text"):
        load_cifar10(tiny_binary, download=False)


def test_python_meta_file_without_a_list_of_names(tiny_python):
    (tiny_python / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps({b"label_names": 5}, protocol=2))
    with pytest.raises(DataError, match="batches.meta: 'label_names' is not a list of names \\(found int\\)"):
        load_cifar10(tiny_python, download=False)


@pytest.mark.parametrize(
    "labels, message",
    [
        ([2**70, 1], "label with more than 9 digits of record 0 is outside 0-9"),  # was OverflowError
        ([1, "3"], "label of record 1 is a str, expected an integer 0-9"),  # was parsed as 3
        ([1.0, 2], "label of record 0 is a float"),
        ("ab", "'labels' is not a list of integers 0-9 \\(found str\\)"),  # was ValueError
    ],
)
def test_python_labels_that_are_not_small_integers(tmp_path, labels, message):
    (tmp_path / "b").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, protocol=2))
    with pytest.raises(DataError, match=message):
        read_python_batch(tmp_path / "b")


def test_python_keys_need_not_decode(tmp_path):
    images, labels = fake_batch(3, 0)
    (tmp_path / "b").write_bytes(pickle.dumps({b"\xff": 0, b"data": images, b"labels": labels.tolist()}, protocol=2))
    assert read_python_batch(tmp_path / "b", 3)[1].tolist() == [0, 1, 2]  # was UnicodeDecodeError


def test_python_fortran_order_array_reads_the_same(tmp_path):
    images, labels = fake_batch(3, 2)
    (tmp_path / "b").write_bytes(pickle.dumps({b"data": np.asfortranarray(images), b"labels": labels.tolist()}, protocol=2))
    assert np.array_equal(read_python_batch(tmp_path / "b", 3)[0].numpy().reshape(3, 3072), images)


def py2_batch_pickle(images: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as the official files are: protocol 2 written by Python 2 and numpy, str as BINSTRING."""

    def string(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b

    def integer(n: int) -> bytes:
        return b"J" + struct.pack("<i", n)

    return b"".join(
        [
            b"\x80\x02}(",
            string(b"data"),  # PROTO 2, an empty dict, MARK its items
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n",
            integer(0),
            b"\x85",
            string(b"b"),
            b"\x87R",
            b"(",
            integer(1),
            integer(len(images)),
            integer(3072),
            b"\x86",  # state: version, shape,
            b"cnumpy\ndtype\n",
            string(b"u1"),
            integer(0),
            integer(1),
            b"\x87R",  # dtype('u1', 0, 1)
            b"(",
            integer(3),
            string(b"|"),
            b"NNN",
            integer(-1),
            integer(-1),
            integer(0),
            b"tb",  # with its own state,
            b"\x89",
            string(images.tobytes()),
            b"tb",  # C order, raw bytes; BUILD the array
            string(b"labels"),
            b"](",
            *[b"K" + bytes([v]) for v in labels],
            b"e",
            b"u.",
        ]
    )


def test_reads_python_2_pickles_as_numpy_does(tmp_path):
    images, labels = fake_batch(300, 5)
    raw = py2_batch_pickle(images, labels.tolist())
    by_numpy = pickle.loads(raw, encoding="bytes")  # the checked-in reference: numpy's own reading
    assert np.array_equal(by_numpy[b"data"], images) and by_numpy[b"labels"] == labels.tolist()
    (tmp_path / "b").write_bytes(raw)
    x, y = read_python_batch(tmp_path / "b", 300)
    assert np.array_equal(x.numpy().reshape(300, 3072), images) and y.tolist() == labels.tolist()


def test_pickle_memo_index_costs_no_memory(tmp_path):
    """LONG_BINPUT 2**24: the C unpickler allocated and zeroed 256 MB for these 10 bytes."""
    (tmp_path / "b").write_bytes(b"\x80\x02Nr" + struct.pack("<I", 2**24) + b".")
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="expected a pickled dict, found NoneType"):
            read_python_batch(tmp_path / "b")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000


def test_pickle_cannot_set_attributes_on_what_it_may_load(tmp_path):
    import codecs

    from cifarlab.data import formats as data

    # BUILD on _codecs.encode with slot state {'__defaults__': ('x', 'latin1')}
    raw = b"\x80\x02c_codecs\nencode\nN}X\x0c\x00\x00\x00__defaults__X\x01\x00\x00\x00xX\x06\x00\x00\x00latin1\x86s\x86b."
    (tmp_path / "b").write_bytes(raw)
    with pytest.raises(DataError, match="BUILD on an object that takes no state"):
        read_python_batch(tmp_path / "b")
    assert data._latin1_encode.__defaults__ is None and codecs.encode.__name__ == "encode"


# ---------------------------------------------------------------- fuzzing

OPCODES = [op.code.encode("latin-1") for op in pickletools.opcodes]
EDGE_INTS = [struct.pack("<I", v) for v in (0, 1, 255, 3072, 2**24, 2**31 - 1, 2**31, 2**32 - 1)]


def mutate(seed: bytes, rng: random.Random) -> bytes:
    """1-4 random edits of `seed`, mostly near its ends, where a pickle keeps its structure (pixels fill the middle)."""
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        n = len(data)
        if n == 0:
            data += rng.randbytes(1)
            continue
        near = min(n, 300)
        i = rng.choice([rng.randrange(near), n - 1 - rng.randrange(near), rng.randrange(n)])
        edit = rng.randrange(7)
        if edit == 0:
            data[i] = rng.randrange(256)
        elif edit == 1:
            data[i:i] = rng.randbytes(rng.randint(1, 8))
        elif edit == 2:
            del data[i : i + rng.randint(1, 16)]
        elif edit == 3:
            del data[i:]
        elif edit == 4:
            data[i : i + 1] = rng.choice(OPCODES)
        elif edit == 5:
            data[i : i + 4] = rng.choice(EDGE_INTS)
        else:
            j = rng.randrange(n)
            data[i:i] = data[j : j + rng.randint(1, 32)]
    return bytes(data)


def fuzz(reader, seeds: list[bytes], records: int, folder: Path, count: int, seed: int) -> dict:
    """Feed `count` mutated seeds to `reader`; only DataError may escape, and what loads must be a valid batch."""
    rng = random.Random(seed)
    outcomes = {"DataError": 0, "loaded": 0}
    for i in range(count):
        raw = mutate(rng.choice(seeds), rng)
        path = folder / f"fuzzed-{i}"  # a new file each time: truncating one in place is slow on some disks
        path.write_bytes(raw)
        try:
            images, labels = reader(path, records)
        except DataError as e:
            assert str(path) in str(e) and "\n" not in str(e)
            outcomes["DataError"] += 1
            continue
        except Exception as e:  # noqa: BLE001 - the point: any other exception fails the test, named with its input
            pytest.fail(f"input {i} ({raw[:60]!r}...) escaped as {type(e).__name__}: {e}")
        assert images.shape == (records, 3, 32, 32) and images.dtype == torch.uint8
        assert labels.dtype == torch.int64 and int(labels.min()) >= 0 and int(labels.max()) <= 9
        outcomes["loaded"] += 1
    return outcomes


def pickle_seeds() -> list[bytes]:
    """Valid two-record batches in every protocol numpy's arrays pickle the same way, plus odd relatives."""
    images, labels = fake_batch(2, 0)
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": labels.tolist(), b"data": images}
    seeds = [pickle.dumps(batch, protocol=p) for p in range(5)]
    seeds.append(py2_batch_pickle(images, labels.tolist()))
    seeds.append(pickle.dumps({"data": images, "labels": labels.tolist()}, protocol=2))
    seeds.append(pickle.dumps({b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}, protocol=2))
    seeds.append(pickle.dumps({b"data": np.arange(12).reshape(3, 4), b"labels": [2**70, -1, "3", 1.5, True, None]}, protocol=2))
    return seeds


def test_fuzzed_python_batches_raise_only_data_error(tmp_path):
    seeds = pickle_seeds()
    for i, raw in enumerate(seeds[:7]):
        (tmp_path / "seed").write_bytes(raw)
        assert len(read_python_batch(tmp_path / "seed", 2)[1]) == 2, f"seed {i} does not load unmutated"
    outcomes = fuzz(read_python_batch, seeds, 2, tmp_path, count=1000, seed=0)
    assert outcomes["DataError"] > 500 and outcomes["loaded"] > 0  # the mutations reach past the first check


def test_fuzzed_binary_batches_raise_only_data_error(tmp_path):
    images, labels = fake_batch(3, 1)
    seed = np.concatenate([labels.astype(np.uint8)[:, None], images], axis=1).tobytes()
    outcomes = fuzz(read_binary_batch, [seed], 3, tmp_path, count=300, seed=0)
    assert outcomes["DataError"] > 100 and outcomes["loaded"] > 0


def test_fuzzed_python_meta_raises_only_data_error(tmp_path):
    from cifarlab.data.formats import _read_class_names

    seed = pickle.dumps({b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": 10000, b"num_vis": 3072}, protocol=2)
    rng = random.Random(0)
    for i in range(300):
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / "batches.meta").write_bytes(mutate(seed, rng))
        try:
            names = _read_class_names(folder, binary=False)
        except DataError as e:
            assert "\n" not in str(e)
            continue
        assert len(names) == 10 and all(isinstance(n, str) for n in names)
