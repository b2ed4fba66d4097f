"""The download path, against a local archive served through a file:// URL (no internet)."""

import tarfile
from pathlib import Path

import pytest

from cifarlab.data import Archive, DataError, load_cifar10, md5sum
from conftest import write_binary


def make_archive(tmp_path) -> Path:
    write_binary(tmp_path / "src")
    archive = tmp_path / "served" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    return archive


def test_download_checks_md5_and_moves_into_place(tmp_path):
    archive = make_archive(tmp_path)
    spec = Archive(archive.as_uri(), md5sum(archive), archive.name)
    data = load_cifar10(tmp_path / "cache", archive=spec)
    assert len(data.train_labels) == 100
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["cifar-10-batches-bin"]
    again = load_cifar10(tmp_path / "cache", download=False)  # now found on disk
    assert len(again.test_labels) == 20


def test_corrupt_download_never_becomes_the_data(tmp_path):
    archive = make_archive(tmp_path)
    spec = Archive(archive.as_uri(), "0" * 32, archive.name)
    with pytest.raises(DataError, match="MD5 .* does not match"):
        load_cifar10(tmp_path / "cache", archive=spec)
    assert list((tmp_path / "cache").iterdir()) == []  # staging removed, nothing in place


def test_no_network_says_where_it_looked(tmp_path):
    spec = Archive("http://127.0.0.1:9/cifar-10-binary.tar.gz", "0" * 32, "cifar-10-binary.tar.gz")
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path / "cache", archive=spec)
    message = str(e.value)
    assert "\n" not in message
    assert str(tmp_path / "cache") in message and "CIFARLAB_DATA" in message


@pytest.fixture
def unlistable(tmp_path, monkeypatch) -> Path:
    """A data folder that cannot be listed, as for a user without read permission on it (the tests
    run as root, whom permissions do not stop, so os.scandir is made to answer as for that user)."""
    import os

    folder = tmp_path / "locked"
    folder.mkdir()
    scandir = os.scandir

    def refusing_scandir(path="."):
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)
    return folder


def test_an_unreadable_data_folder_is_said_so_and_never_downloaded_into(unlistable, monkeypatch):
    from cifarlab.data import download
    from cifarlab.training.info import data_status

    status = data_status(unlistable)
    assert status["status"] == "cannot be read (Permission denied): check its permissions (nothing is downloaded into it)"
    monkeypatch.setattr(download, "_fetch", lambda *a: pytest.fail("downloaded into an unreadable folder"))
    with pytest.raises(DataError, match=r"locked: cannot be read \(Permission denied\); not downloading"):
        load_cifar10(unlistable)
    assert list(Path(unlistable).iterdir()) == []  # no staging folder either


def test_info_on_a_file_where_a_folder_is_expected_says_what_is_wrong(tmp_path):
    from cifarlab.training.info import data_status

    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("notes")
    status = data_status(not_a_folder)["status"]
    assert status.startswith("invalid: ") and "not found" not in status
