"""`cifarlab train --tensorboard`: epochs mirrored from metrics.jsonl into TensorBoard event files."""

from __future__ import annotations

import json
import sys

import pytest

from cifarlab.cli import main


def test_train_with_tensorboard_mirrors_the_metrics(tiny_binary, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    argv = [
        "train",
        "--data-dir",
        str(tiny_binary),
        "--out",
        str(run),
        "--epochs",
        "2",
        "--val-size",
        "20",
        "--batch-size",
        "40",
        "--device",
        "cpu",
        "--quiet",
        "--tensorboard",
    ]
    assert main(argv) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for tag, key in (("accuracy/validation", "val_accuracy"), ("loss/train", "train_loss"), ("learning_rate", "lr")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([m[key] for m in metrics], rel=1e-6)


def test_tensorboard_missing_is_a_one_line_error(tiny_binary, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    argv = ["train", "--data-dir", str(tiny_binary), "--out", str(tmp_path / "run"), "--epochs", "1", "--tensorboard"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs the tensorboard package" in err and "cifarlab[tensorboard]" in err
    assert not (tmp_path / "run").exists()  # checked before anything was written


def test_tensorboard_after_a_resume_has_every_epoch_once(tiny_binary, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cifarlab.training.presets import get_preset
    from cifarlab.training.tblog import TensorBoardMirror
    from cifarlab.training.train import resume, train

    run = tmp_path / "run"
    config = get_preset("paper").replace(epochs=3, batch_size=40, val_size=20, model_options={"widths": [8, 8, 8, 8, 16, 16, 16]})

    def stop_after_epoch_1(line):
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt

    first = TensorBoardMirror(run)
    with pytest.raises(KeyboardInterrupt):
        train(config, run, data_dir=tiny_binary, device="cpu", progress=False, log=stop_after_epoch_1, on_epoch=first.add)
    first.close()
    second = TensorBoardMirror(run)
    resume(run, data_dir=tiny_binary, device="cpu", progress=False, log=lambda s: None, on_epoch=second.add)
    second.close()
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [s.step for s in events.Scalars("loss/train")] == [1, 2, 3]
