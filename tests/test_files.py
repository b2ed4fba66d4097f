"""The atomic writer under abuse: every OSError of a write is a one-line RunError naming the file
and the reason, with no temporary left and no existing file damaged; temporaries a killed writer
left are removed by the next write into the folder, and a live writer's are not."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from cifarlab.common import files
from cifarlab.common.files import (
    FileError,
    RunError,
    atomic_write_bytes,
    atomic_write_json,
    read_toml,
    remove_stale_temporaries,
)


def raising(error: int):
    def fail(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    return fail


@pytest.mark.parametrize(
    "call, error",
    [
        ("open", errno.EACCES),  # a read-only folder, no permission (root ignores mode bits: simulated)
        ("fsync", errno.ENOSPC),  # a full disk
        ("replace", errno.EROFS),  # a read-only filesystem
    ],
)
def test_a_failed_write_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, call, error):
    target = tmp_path / "results.json"
    target.write_text('{"old": 1}')
    monkeypatch.setattr(files.os, call, raising(error))
    with pytest.raises(RunError) as refused:
        atomic_write_json(target, {"new": 2})
    assert str(refused.value) == f"{target}: cannot write it ({os.strerror(error)})"
    monkeypatch.undo()
    assert target.read_text() == '{"old": 1}' and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_write_where_no_file_can_be_is_one_line():
    with pytest.raises(RunError, match=r"^/proc/out\.json: cannot write it \(.+\)$"):
        atomic_write_bytes("/proc/out.json", b"{}")
    with pytest.raises(RunError, match=r"^/proc/self/no/such\.json: cannot write it"):
        files.append_jsonl("/proc/self/no/such.json", {})


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    from cifarlab.common.rundir import RunDir

    (tmp_path / "file").write_text("")
    with pytest.raises(RunError, match=f"^{tmp_path / 'file' / 'run'}: cannot write it"):
        RunDir(tmp_path / "file" / "run").start({"train": {}})


def killed_writer(folder, name: str) -> str:
    """A child process that opens a temporary as the writer does, locks it and is then SIGKILLed."""
    code = (
        "import os, sys, time; from pathlib import Path; from cifarlab.common import files\n"
        f"fd, tmp = files._create_temporary(Path({str(folder / name)!r})); files.try_lock(fd)\n"
        "os.write(fd, b'half'); print(tmp.name, flush=True); time.sleep(60)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )
    temporary = child.stdout.readline().strip()
    return child, temporary


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    child, temporary = killed_writer(tmp_path, "report.html")
    try:
        os.utime(tmp_path / temporary, (time.time() - 10, time.time() - 10))
        assert remove_stale_temporaries(tmp_path) == []  # alive and holding its lock: left alone
        child.send_signal(signal.SIGKILL)
        child.wait()
        (tmp_path / ".notes.txt.tmp").write_text("not ours")  # not our pattern: never touched
        os.utime(tmp_path / ".notes.txt.tmp", (time.time() - 10, time.time() - 10))
        os.mkfifo(tmp_path / ".x.json.0123abcd.tmp")  # our pattern, but a FIFO: opening it would hang
        os.utime(tmp_path / ".x.json.0123abcd.tmp", (time.time() - 10, time.time() - 10))
        atomic_write_json(tmp_path / "evaluation.json", {"a": 1})
        assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.txt.tmp", ".x.json.0123abcd.tmp", "evaluation.json"]
    finally:
        child.kill()
        child.wait()


def test_a_killed_exports_staging_folder_is_removed(tmp_path):
    staging = files.temporary_name(tmp_path / "safetensors")  # as export names its folder
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half")
    os.utime(staging, (time.time() - 10, time.time() - 10))
    atomic_write_json(tmp_path / "status.json", {"status": "x"})
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_read_toml_is_one_line(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text("a = 1\n[b]\nc = 'x'\n")
    assert read_toml(path) == {"a": 1, "b": {"c": "x"}}
    for text, why in (("a = ", "not valid TOML"), ("a = " + "[" * 100_000, "not valid TOML"), (b"\xff", "not UTF-8")):
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(FileError) as refused:
            read_toml(path)
        assert str(refused.value).startswith(f"{path}: ") and why in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(FileError, match=f"^{tmp_path / 'none.toml'}: not found$"):
        read_toml(tmp_path / "none.toml")
