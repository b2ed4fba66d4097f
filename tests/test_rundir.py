"""The run directory under abuse: file modes."""

from __future__ import annotations

import os
import stat

from cifarlab.rundir import atomic_write_json


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_created_with_the_users_umask(tiny_run, tmp_path):
    expected = 0o666 & ~current_umask()
    for name in ("config.json", "status.json", "results.json", "checkpoint.pt", "metrics.jsonl"):
        assert mode(tiny_run / name) == expected, name  # atomically written files were 0600
    previous = os.umask(0o027)  # a team sharing runs by group
    try:
        atomic_write_json(tmp_path / "shared.json", {"a": 1})
    finally:
        os.umask(previous)
    assert mode(tmp_path / "shared.json") == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]  # no temporary left
