import json

import pytest
import torch

from cifarlab.config import get_preset
from cifarlab.rundir import RunDir, RunError, load_checkpoint, read_metrics
from cifarlab.train import TrainingDiverged, seconds_to_stabilise, train
from conftest import write_binary

SMALL = {"widths": [8, 8, 8, 8, 16, 16, 16], "fc_widths": [16, 16]}


def small_config(**kw):
    base = dict(epochs=3, batch_size=16, val_size=20, crop_pad=2, flip=True, model_options=SMALL)
    return get_preset("paper").replace(**{**base, **kw})


def quiet_train(config, out, data, **kw):
    return train(config, out, data_dir=data, device="cpu", progress=False, log=lambda s: None, **kw)


def test_run_directory_contents(tiny_run):
    run = RunDir(tiny_run)
    config = run.config()
    assert config["train"]["epochs"] == 2 and config["val_images"] == 20
    metrics, partial = run.metrics()
    assert [m["epoch"] for m in metrics] == [1, 2] and not partial
    for key in ("lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
        assert key in metrics[0]
    results = run.results()
    for key in ("test_accuracy", "test_error", "params", "seconds_per_step", "seconds_per_epoch",
                "seconds_to_stabilise", "train_seconds", "device", "torch_version", "tta"):
        assert key in results, key
    assert results["test_error"] == pytest.approx(1 - results["test_accuracy"])
    assert run.status()["status"] == "finished"
    state = load_checkpoint(tiny_run)  # weights_only=True inside
    assert state["meta"]["model"] == "paper" and len(state["meta"]["classes"]) == 10


FAST_SMALL = dict(epochs=3, batch_size=32, val_size=20, model_options={"widths": [8, 16, 16]})


@pytest.mark.parametrize("preset", ["paper", "fast"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, preset):
    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    config = small_config() if preset == "paper" else get_preset("fast").replace(**FAST_SMALL)
    quiet_train(config, tmp_path / "straight", data)
    # a run stopped after epoch 1 of its 3-epoch schedule, then resumed
    stopped = tmp_path / "stopped2"
    with pytest.raises(KeyboardInterrupt):
        train(config, stopped, data_dir=data, device="cpu", progress=False, log=_interrupt_after_epoch(1))
    assert RunDir(stopped).status()["status"] == "stopped"
    assert load_checkpoint(stopped)["epoch"] == 1
    quiet_train(None, stopped, data, resume=True)
    a, b = load_checkpoint(tmp_path / "straight")["model"], load_checkpoint(stopped)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["epoch"] for m in read_metrics(stopped / "metrics.jsonl")[0]] == [1, 2, 3]
    assert json.loads((stopped / "results.json").read_text())["epochs"] == 3


def _interrupt_after_epoch(n):
    def log(line):
        if line.startswith(f"epoch {n}/"):
            raise KeyboardInterrupt

    return log


def test_existing_run_is_not_overwritten(tiny_run, tmp_path):
    with pytest.raises(RunError, match="already holds a run"):
        quiet_train(small_config(), tiny_run, tmp_path)


def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(tmp_path):
    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    with pytest.raises(TrainingDiverged, match="training loss became"):
        quiet_train(small_config(lr=1e30, epochs=2), tmp_path / "run", data)
    status = RunDir(tmp_path / "run").status()
    assert status["status"] == "failed" and "loss became" in status["reason"]


def test_stabilised_epoch_definition():
    h = [{"epoch": i + 1, "elapsed_seconds": 10.0 * (i + 1), "val_accuracy": a} for i, a in enumerate([0.5, 0.8, 0.852, 0.849, 0.85])]
    assert seconds_to_stabilise(h) == (3, 30.0)
    assert seconds_to_stabilise([{"epoch": 1, "elapsed_seconds": 1.0, "val_accuracy": None}]) == (None, None)
