import json

import pytest
import torch

from cifarlab.config import get_preset
from cifarlab.rundir import RunDir, RunError, load_checkpoint, read_metrics
from cifarlab.optim import early_stop_reason
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


def _history(accs, lrs):
    return [{"epoch": i + 1, "val_accuracy": a, "lr": lr} for i, (a, lr) in enumerate(zip(accs, lrs))]


def test_early_stop_waits_for_a_cut_then_for_patience_without_improvement():
    config = small_config(stop_patience=2, stop_min_delta=0.001)
    flat = [0.5, 0.6, 0.6, 0.6, 0.6, 0.6]
    assert early_stop_reason(_history(flat, [0.01] * 6), 0.01, config) is None  # never cut: go on
    # cut after epoch 3; no gain since epoch 2 -> 2 epochs counted from the cut (epochs 4, 5)
    assert early_stop_reason(_history(flat[:4], [0.01] * 3 + [0.001]), 0.001, config) is None
    reason = early_stop_reason(_history(flat[:5], [0.01] * 3 + [0.001] * 2), 0.001, config)
    assert "since the learning rate was first cut (epoch 3)" in reason
    # a gain of 0.05% is below the 0.1-point threshold; a gain of 1 point resets the count
    rising = [0.5, 0.6, 0.6, 0.6005, 0.61, 0.61]
    assert early_stop_reason(_history(rising[:5], [0.01] * 3 + [0.001] * 2), 0.001, config) is None
    assert early_stop_reason(_history(rising, [0.01] * 3 + [0.001] * 3), 0.001, config) is None
    assert early_stop_reason(_history(flat[:5], [0.01] * 5), 0.01, small_config(stop_patience=0)) is None


def test_early_stop_ends_the_run_and_resumes_to_the_same_epoch(tmp_path):
    """Noise labels: the validation loss never improves, so the plateau schedule cuts after epoch 2
    and the run stops within a few epochs; a run interrupted on the way stops at the same epoch."""
    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    config = small_config(epochs=30, plateau_patience=1, stop_patience=2, lr=0.05)
    straight = quiet_train(config, tmp_path / "straight", data)
    assert straight["stopped_early"] and straight["epochs"] < 30
    assert straight["stop_epoch"] == straight["epochs"] and "first cut" in straight["stop_reason"]
    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        train(config, stopped, data_dir=data, device="cpu", progress=False, log=_interrupt_after_epoch(2))
    resumed = quiet_train(None, stopped, data, resume=True)
    assert resumed["epochs"] == straight["epochs"] and resumed["stop_reason"] == straight["stop_reason"]
    a, b = load_checkpoint(tmp_path / "straight")["model"], load_checkpoint(stopped)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_and_adamw_train(tmp_path, optimizer):
    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    results = quiet_train(small_config(epochs=1, optimizer=optimizer, lr=1e-3), tmp_path / "run", data)
    state = load_checkpoint(tmp_path / "run")
    assert "exp_avg" in next(iter(state["optimizer"]["state"].values()))  # Adam's moment estimates
    assert results["epochs"] == 1


def test_init_from_takes_weights_only_and_records_the_source(tiny_run, tmp_path):
    config = small_config(epochs=1, lr=0.001, init_from=str(tiny_run), val_size=20, crop_pad=0, flip=False,
                          model_options={"widths": [8, 8, 8, 8, 16, 16, 16], "fc_widths": [16, 16]})
    source = load_checkpoint(tiny_run)
    quiet_train(config, tmp_path / "warm", tiny_run.parent / "data")
    saved = json.loads((tmp_path / "warm" / "config.json").read_text())
    assert saved["init_from"]["checkpoint"] == str((tiny_run / "checkpoint.pt").resolve())
    assert saved["init_from"]["epoch"] == source["epoch"] == 2
    assert saved["train"]["init_from"] == str(tiny_run.resolve())
    warm = load_checkpoint(tmp_path / "warm")
    assert warm["optimizer"]["param_groups"][0]["lr"] == 0.001  # a fresh optimizer at the new rate
    # one epoch at lr 0.001 moves the weights only a little from the source's
    w0, w1 = source["model"]["features.0.weight"], warm["model"]["features.0.weight"]
    assert 0 < (w1 - w0).abs().max() < 0.05 * w0.abs().max()


def test_init_from_a_model_that_does_not_fit_is_one_line(tiny_run, tmp_path):
    config = small_config(epochs=1, init_from=str(tiny_run), model_options={"widths": [8, 8, 8, 8, 16, 16, 32]})
    with pytest.raises(RunError, match="do not fit this model"):
        quiet_train(config, tmp_path / "run", tiny_run.parent / "data")


def test_compile_trains_the_same_run_and_reports_its_time_apart(tmp_path, monkeypatch):
    """torch.compile with the eager backend (tracing only, seconds on a CPU): the compile warm-up must
    leave weights, BatchNorm statistics and the dropout RNG as they were, so the run is unchanged."""
    import cifarlab.train as train_module

    monkeypatch.setattr(train_module, "COMPILE_BACKEND", "eager")
    data = write_binary(tmp_path / "data", per_batch=10, test=20).parent  # 30 training images: batches of 16 and 14
    config = small_config(epochs=2, amp="off")
    plain = quiet_train(config, tmp_path / "plain", data)
    compiled = quiet_train(config.replace(compile=True), tmp_path / "compiled", data)
    a, b = load_checkpoint(tmp_path / "plain")["model"], load_checkpoint(tmp_path / "compiled")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain["compile_seconds"] is None and compiled["compile_seconds"] > 0
