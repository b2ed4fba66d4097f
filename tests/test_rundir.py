"""The run directory under abuse: file modes, the run lock, and checkpoints whose metadata lies."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from PIL import Image

from cifarlab.cli import main
from cifarlab.common.checkpoint import load_checkpoint
from cifarlab.common.files import RunError, atomic_torch_save, atomic_write_json
from cifarlab.common.rundir import LOCK, RunDir
from cifarlab.inference.model import Predictor


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_created_with_the_users_umask(tiny_run, tmp_path):
    expected = 0o666 & ~current_umask()
    for name in ("config.json", "status.json", "results.json", "checkpoint.pt", "metrics.jsonl", LOCK):
        assert mode(tiny_run / name) == expected, name  # atomically written files were 0600
    previous = os.umask(0o027)  # a team sharing runs by group
    try:
        atomic_write_json(tmp_path / "shared.json", {"a": 1})
    finally:
        os.umask(previous)
    assert mode(tmp_path / "shared.json") == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]  # no temporary left


def test_the_lock_is_held_once_and_says_by_whom(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.lock_held() is None  # nothing to ask yet
    with run.lock():
        assert run.lock_held() is True
        with pytest.raises(RunError) as refused, RunDir(tmp_path / "run").lock():
            pass
        message = str(refused.value)
        assert message.count("\n") == 0 and "a training is running in this folder" in message and f"pid {os.getpid()}" in message
        (run.path / "config.json").write_text("{}")  # the training wrote something: its folder and lock stay
    assert run.lock_held() is False
    assert sorted(p.name for p in run.path.iterdir()) == [LOCK, "config.json"]


def test_a_lock_taken_for_nothing_leaves_the_folder_as_it_was(tmp_path):
    with RunDir(tmp_path / "new").lock():
        pass
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with RunDir(tmp_path / "empty").lock():
        pass
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_full_disk_while_taking_the_lock_is_a_one_line_error(tmp_path, monkeypatch):
    """train on a full disk failed with an OSError traceback from writing the lock's holder."""

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(RunError, match=r"\.lock: cannot write it \(No space left on device\)"), RunDir(tmp_path / "run").lock():
        pass
    monkeypatch.undo()
    assert not (tmp_path / "run").exists()  # nothing half-made is left


def altered(tiny_run, tmp_path, weights=None, **meta):
    state = load_checkpoint(tiny_run)
    state["meta"].update(meta)
    if weights is not None:
        state["model"] = weights
    atomic_torch_save(tmp_path / "altered.pt", state)
    return tmp_path / "altered.pt"


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BAD_META = [
    (dict(classes=CLASSES[:9]), "checkpoint metadata names 9 classes but the model has 10 outputs"),
    (dict(classes=CLASSES[:9] + ["cat"]), "classes names a class twice"),
    (dict(classes="airplane"), "classes should be a list of class names, found text"),
    (dict(std=[0.25, 0.0, 0.26]), "std should be 3 positive numbers"),
    (dict(mean=[0.5, 0.5]), "mean should be 3 numbers"),
    (dict(model_options=[8, 8]), "model_options should be a table of options, found a list"),
    (dict(model_options={"widths": [8]}), "cannot rebuild model 'paper'"),
    (dict(channels_last="yes"), "channels_last should be true/false"),
    (dict(model=[[1]]), "model should be a name"),
    (dict(model=None, classes=None), "model should be a name"),
]


@pytest.mark.parametrize("meta, message", BAD_META, ids=[next(iter(m)) + str(i) for i, (m, _) in enumerate(BAD_META)])
def test_checkpoint_metadata_is_checked_on_load(tiny_run, tmp_path, capsys, meta, message):
    ckpt = altered(tiny_run, tmp_path, **meta)
    with pytest.raises(RunError, match=message.replace("(", r"\(")):
        Predictor(ckpt)
    png = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(png)
    for argv in (["predict", str(ckpt), str(png)], ["serve", str(ckpt), "--port", "1"]):  # serve: before /health says ok
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err and str(ckpt) in err


def test_checkpoint_model_state_of_the_wrong_type_is_refused(tiny_run, tmp_path):
    for weights in ([1, 2], {"features.0.weight": [1.0]}):
        with pytest.raises(RunError, match="its model state should be named tensors"):
            load_checkpoint(altered(tiny_run, tmp_path, weights=weights))
    state = load_checkpoint(tiny_run)
    state["meta"] = ["paper"]
    atomic_torch_save(tmp_path / "meta.pt", state)
    with pytest.raises(RunError, match="its meta should be a table, found a list"):
        load_checkpoint(tmp_path / "meta.pt")


def test_good_metadata_still_loads_and_predicts(tiny_run, tmp_path):
    state = load_checkpoint(tiny_run)
    del state["meta"]["channels_last"]  # older checkpoints: inference defaults to contiguous memory
    atomic_torch_save(tmp_path / "old.pt", state)
    predictor = Predictor(tmp_path / "old.pt")
    logits = predictor.logits(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all() and predictor.meta["channels_last"] is False
