import json
import os
import time

import pytest
import torch

from cifarlab.common.checkpoint import load_checkpoint
from cifarlab.common.files import RunError
from cifarlab.common.rundir import RunDir, seconds_to_stabilise
from cifarlab.common.runfiles import read_metrics
from cifarlab.training.optim import early_stop_reason
from cifarlab.training.presets import get_preset
from cifarlab.training.train import TrainingDiverged, check_divergence, resume, train
from conftest import write_binary

SMALL = {"widths": [8, 8, 8, 8, 16, 16, 16], "fc_widths": [16, 16]}


def small_config(**kw):
    base = dict(epochs=3, batch_size=16, val_size=20, crop_pad=2, flip=True, model_options=SMALL)
    return get_preset("paper").replace(**{**base, **kw})


def quiet_train(config, out, data, **kw):
    return train(config, out, data_dir=data, device="cpu", progress=False, log=lambda s: None, **kw)


def quiet_resume(out, data, **kw):
    return resume(out, data_dir=data, device="cpu", progress=False, log=lambda s: None, **kw)


def test_run_directory_contents(tiny_run):
    run = RunDir(tiny_run)
    config = run.config()
    assert config["train"]["epochs"] == 2 and config["val_images"] == 20
    metrics, partial = run.metrics()
    assert [m["epoch"] for m in metrics] == [1, 2] and not partial
    for key in ("lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
        assert key in metrics[0]
    results = run.results()
    for key in (
        "test_accuracy",
        "test_error",
        "params",
        "seconds_per_step",
        "seconds_per_epoch",
        "seconds_to_stabilise",
        "train_seconds",
        "device",
        "torch_version",
        "tta",
    ):
        assert key in results, key
    assert results["test_error"] == pytest.approx(1 - results["test_accuracy"])
    assert run.status()["status"] == "finished"
    state = load_checkpoint(tiny_run)  # weights_only=True inside
    assert state["meta"]["model"] == "paper" and len(state["meta"]["classes"]) == 10


FAST_SMALL = dict(epochs=3, low_res_epochs=1, batch_size=32, val_size=20, model_options={"widths": [8, 16, 16]})


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
    quiet_resume(stopped, data)
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


def test_a_huge_but_finite_loss_is_divergence_and_fails_the_run(tmp_path):
    """lr 1e6, one step per epoch, no validation split: epoch 2's training loss is ~1e24, finite; such
    a run was recorded as finished."""
    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    config = small_config(lr=1e6, epochs=2, batch_size=40, val_size=0, stop_patience=0)
    with pytest.raises(TrainingDiverged, match=r"training loss .* in epoch 2 is over 10x .*: diverged"):
        quiet_train(config, tmp_path / "run", data, train_subset=40)
    run = RunDir(tmp_path / "run")
    assert run.status()["status"] == "failed" and "diverged" in run.status()["reason"]
    assert load_checkpoint(tmp_path / "run")["epoch"] == 1 and not run.file("results.json").exists()


@pytest.mark.parametrize(
    "loss, val_loss, first, diverged",
    [
        (2.3, 2.3, None, False),  # chance level
        (23.1, 2.3, None, True),  # over 10 x ln(10) = 23.03 in the first epoch
        (22.9, None, None, False),
        (1.0, 1.0, 0.05, False),  # 20x a warm start's first epoch, still under 10 x ln(10)
        (40.0, 3.0, 5.0, False),  # a run that started high is judged against its start: 10 x 5
        (51.0, 3.0, 5.0, True),
        (2.0, float("nan"), 2.3, True),  # a validation loss that is not finite
        (2.0, float("inf"), 2.3, True),
    ],
)
def test_divergence_is_a_loss_ten_times_chance_or_the_first_epoch(loss, val_loss, first, diverged):
    history = [] if first is None else [{"epoch": 1, "train_loss": first}]
    record = {"epoch": len(history) + 1, "train_loss": loss, "val_loss": val_loss}
    if diverged:
        with pytest.raises(TrainingDiverged, match=f"in epoch {record['epoch']}"):
            check_divergence(record, history, num_classes=10)
    else:
        check_divergence(record, history, num_classes=10)


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
    resumed = quiet_resume(stopped, data)
    assert resumed["epochs"] == straight["epochs"] and resumed["stop_reason"] == straight["stop_reason"]
    a, b = load_checkpoint(tmp_path / "straight")["model"], load_checkpoint(stopped)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_and_adamw_train(tmp_path, optimizer):
    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    results = quiet_train(small_config(epochs=1, optimizer=optimizer, lr=1e-3), tmp_path / "run", data)
    state = load_checkpoint(tmp_path / "run")
    moments = [s for s in state["optimizer"]["state"].values()]
    steps = results["epochs"] * load_checkpoint(tmp_path / "run")["history"][0]["steps"]
    assert moments and all(float(m["step"]) == steps for m in moments)  # every parameter stepped every batch
    assert all(m["exp_avg"].abs().sum() > 0 and (m["exp_avg_sq"] >= 0).all() and m["exp_avg_sq"].sum() > 0 for m in moments)
    group = state["optimizer"]["param_groups"][0]
    assert group["lr"] == pytest.approx(1e-3 * 0.1**0) and group["weight_decay"] == small_config().weight_decay
    assert group.get("decoupled_weight_decay", optimizer == "adamw") == (optimizer == "adamw")  # AdamW decays apart
    assert results["epochs"] == 1


def test_init_from_takes_weights_only_and_records_the_source(tiny_run, tmp_path):
    config = small_config(
        epochs=1,
        lr=0.001,
        init_from=str(tiny_run),
        val_size=20,
        crop_pad=0,
        flip=False,
        model_options={"widths": [8, 8, 8, 8, 16, 16, 16], "fc_widths": [16, 16]},
    )
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


# ---------------------------------------------------------------- the run directory under abuse


def _interrupt_at(prefix):
    def log(line):
        if line.startswith(prefix):
            raise KeyboardInterrupt

    return log


def one_line(error) -> str:
    message = str(error.value)
    assert message.count("\n") == 0, message
    return message


def test_a_second_training_or_resume_of_a_running_run_is_one_line(tmp_path):
    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    out = tmp_path / "run"
    with RunDir(out).lock():  # as a training in another process holds it
        with pytest.raises(RunError) as second:
            quiet_train(small_config(epochs=1), out, data)
        assert "a training is running in this folder" in one_line(second)
    with pytest.raises(KeyboardInterrupt):  # a run stopped after its first epoch
        train(small_config(epochs=2), out, data_dir=data, device="cpu", progress=False, log=_interrupt_after_epoch(1))
    with RunDir(out).lock():
        with pytest.raises(RunError) as resumed:
            quiet_resume(out, data)
        assert "a training is running in this folder" in one_line(resumed)
    assert load_checkpoint(out)["epoch"] == 1 and len(read_metrics(out / "metrics.jsonl")[0]) == 1  # untouched


def backdate(path, seconds: float = 60) -> None:
    """A killed writer's temporary is as old as the kill: clean-up leaves younger ones alone, since
    a live writer may have created them a moment ago (common/files.py FRESH_SECONDS)."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_run_killed_before_its_first_checkpoint_starts_again_in_place(tmp_path):
    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    out = tmp_path / "run"
    config = small_config(epochs=1)
    with pytest.raises(KeyboardInterrupt):  # killed once training began, before any epoch was saved
        train(config, out, data_dir=data, device="cpu", progress=False, log=_interrupt_at("paper:"))
    assert RunDir(out).status()["status"] == "stopped" and not (out / "checkpoint.pt").exists()
    (out / ".checkpoint.pt.0badc0de.tmp").write_bytes(b"half a checkpoint")  # a kill during the first save
    backdate(out / ".checkpoint.pt.0badc0de.tmp")
    assert quiet_train(config, out, data)["epochs"] == 1  # the same --out, nothing deleted by hand
    assert not list(out.glob(".*.tmp")) and RunDir(out).status()["status"] == "finished"

    again = tmp_path / "again"  # --resume of such a run starts it again from its config.json
    with pytest.raises(KeyboardInterrupt):
        train(config, again, data_dir=data, device="cpu", progress=False, log=_interrupt_at("paper:"))
    lines = []
    results = resume(again, data_dir=data, device="cpu", progress=False, log=lines.append)
    assert results["epochs"] == 1 and "saved no epoch" in lines[0]


def test_a_stale_checkpoint_temporary_is_removed_on_resume(tmp_path):
    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(small_config(epochs=2), out, data_dir=data, device="cpu", progress=False, log=_interrupt_after_epoch(1))
    (out / ".checkpoint.pt.5ca1ab1e.tmp").write_bytes(b"x" * 1000)  # a kill while the next checkpoint was written
    backdate(out / ".checkpoint.pt.5ca1ab1e.tmp")
    assert quiet_resume(out, data)["epochs"] == 2
    assert not list(out.glob(".*.tmp"))


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_folders_that_are_not_resumable_runs_are_never_overwritten(tiny_run, tmp_path):
    data = tiny_run.parent / "data"
    cases = {
        "notes": ({"notes.txt": "mine"}, "holds notes.txt but is not a cifarlab run"),
        "metrics-only": ({"metrics.jsonl": '{"epoch": 1}\n'}, "holds metrics.jsonl but is not a cifarlab run"),
        "foreign-config": ({"config.json": '{"name": "my app"}'}, "config.json: not a cifarlab run config"),
        "extra-file": (
            {"config.json": '{"train": {}}', "status.json": '{"status": "stopped", "epoch": 0}', "notes.txt": "mine"},
            "the folder also holds notes.txt",
        ),
        "epochs-lost": (
            {"config.json": '{"train": {}}', "metrics.jsonl": json.dumps({"epoch": 1, "lr": 0.1, "elapsed_seconds": 1.0}) + "\n"},
            "records 1 finished epoch but has no checkpoint.pt",
        ),
    }
    for name, (files, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for file, text in files.items():
            (folder / file).write_text(text)
        with pytest.raises(RunError) as refused:
            quiet_train(small_config(epochs=1), folder, data)
        assert message in one_line(refused), name
        assert _snapshot(folder) == {f: t.encode() for f, t in files.items()}, name  # no lock file left either
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(RunError, match="is a file, not a folder"):
        quiet_train(small_config(epochs=1), tmp_path / "a-file", data)
    with pytest.raises(RunError, match="a-file/run/.lock: cannot create it"):
        quiet_train(small_config(epochs=1), tmp_path / "a-file" / "run", data)


def test_a_training_that_fails_before_writing_leaves_no_folder(tmp_path):
    from cifarlab.data import DataError
    from cifarlab.training.config import ConfigError

    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent  # 200 training images
    with pytest.raises(DataError, match=r"^--val-size 500 must be between 0 and 199$"):  # larger than the data
        quiet_train(small_config(val_size=500), tmp_path / "run", data)
    assert not (tmp_path / "run").exists()
    # issue 20: val_size 199 of 200 (or a subset the split leaves one image of) was a ZeroDivisionError
    # in train_epoch, with a half-made run folder left behind
    for val_size, subset in ((199, None), (150, 1)):
        with pytest.raises(ConfigError, match=f"^val_size {val_size} leaves 1 training image of 200 .*fewer than the 2 a batch needs"):
            quiet_train(small_config(val_size=val_size, batch_size=512), tmp_path / "run", data, train_subset=subset)
        assert not (tmp_path / "run").exists()


def test_init_from_an_exported_safetensors_folder(tiny_run, tmp_path, capsys):
    from cifarlab.cli import main

    assert main(["export", str(tiny_run), "--format", "safetensors", "--output", str(tmp_path / "export")]) == 0
    capsys.readouterr()
    config = small_config(
        epochs=1, lr=1e-9, init_from=str(tmp_path / "export"), val_size=20, model_options={"widths": [8, 8, 8, 8, 16, 16, 16], "fc_widths": [16, 16]}
    )
    quiet_train(config, tmp_path / "warm", tiny_run.parent / "data")
    saved = json.loads((tmp_path / "warm" / "config.json").read_text())
    assert saved["init_from"] == {"checkpoint": str((tmp_path / "export" / "model.safetensors").resolve()), "epoch": 2, "model": "paper"}
    source, warm = load_checkpoint(tiny_run)["model"], load_checkpoint(tmp_path / "warm")["model"]
    assert torch.allclose(source["features.0.weight"], warm["features.0.weight"], atol=1e-6)  # lr 1e-9: barely moved


def test_a_checkpoint_holding_a_pickle_is_refused_in_our_words(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("never run",))

    torch.save({"model": {}, "meta": {}, "x": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(RunError) as refused:
        load_checkpoint(tmp_path)
    message = str(refused.value)
    assert message == (
        f"{tmp_path / 'checkpoint.pt'}: not a readable cifarlab checkpoint (it holds Python objects other "
        "than tensors and plain values, which cifarlab never loads (they could run code))"
    )
    assert "weights_only" not in message


def test_a_damaged_checkpoint_or_config_is_one_line_on_resume(tiny_run, tmp_path):
    import shutil

    data = tiny_run.parent / "data"
    damages = {
        "history": (lambda state: state.update(history=[1, 2]), "history entry 1 should be a JSON object, found a number"),
        "epoch": (lambda state: state.update(epoch=5), "says epoch 5 but holds 2 epochs of history"),
        "optimizer": (lambda state: state["optimizer"].update(param_groups=[]), "does not fit this run's config.json"),
        "rng": (lambda state: state.update(rng=[0]), "its rng state should be a table, found a list"),
    }
    for name, (damage, message) in damages.items():
        run = shutil.copytree(tiny_run, tmp_path / name)
        state = load_checkpoint(run)
        damage(state)
        torch.save(state, run / "checkpoint.pt")
        with pytest.raises(RunError) as refused:
            quiet_resume(run, data)
        assert message in one_line(refused) and "checkpoint.pt" in str(refused.value), name
    run = shutil.copytree(tiny_run, tmp_path / "config")
    (run / "config.json").write_text("[1]")
    with pytest.raises(RunError) as refused:
        quiet_resume(run, data)
    assert "config.json: should hold a JSON object, found a list" in one_line(refused)


def test_sigterm_stops_a_training_as_ctrl_c_does_and_its_lock_guards_it_until_then(tmp_path):
    """A real second process: while it trains, another training, a resume and `runs` see it running;
    SIGTERM then records `stopped` (the CLI exits as on Ctrl-C) and leaves a resumable run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import cifarlab
    from cifarlab.experiments.runs import list_runs

    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "cifarlab",
        "train",
        "--out",
        str(out),
        "--data-dir",
        str(data),
        "--device",
        "cpu",
        "--quiet",
        "--preset",
        "paper",
        "--epochs",
        "1000",
        "--batch-size",
        "16",
        "--val-size",
        "20",
        "--set",
        "model_options.widths=[8, 8, 8, 8, 16, 16, 16]",
        "--set",
        "model_options.fc_widths=[16, 16]",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(cifarlab.__file__).resolve().parents[1])}
    log = tmp_path / "child.log"
    with open(log, "w") as sink:
        child = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180  # generous: the CPU may be shared with other work
        while not ((out / "metrics.jsonl").exists() and read_metrics(out / "metrics.jsonl")[0]):
            assert child.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.05)
        with pytest.raises(RunError) as second:
            quiet_train(small_config(epochs=1), out, data)
        assert f"a training is running in this folder (pid {child.pid}" in one_line(second)
        with pytest.raises(RunError, match="a training is running in this folder"):
            quiet_resume(out, data)
        assert [r["status"] for r in list_runs(tmp_path)] == ["running"]
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 130, log.read_text()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert "cifarlab train: interrupted" in log.read_text() and "Traceback" not in log.read_text()
    status = RunDir(out).status()
    assert status["status"] == "stopped" and status["reason"] == "terminated (SIGTERM)"
    assert [(r["status"], r["reason"]) for r in list_runs(tmp_path)] == [("stopped", "terminated (SIGTERM)")]
    assert load_checkpoint(out)["epoch"] >= 1 and not list(out.glob(".*.tmp"))


def test_compile_trains_the_same_run_and_reports_its_time_apart(tmp_path, monkeypatch):
    """torch.compile with the eager backend (tracing only, seconds on a CPU): the compile warm-up must
    leave weights, BatchNorm statistics and the dropout RNG as they were, so the run is unchanged."""
    import cifarlab.training.learner as train_module

    monkeypatch.setattr(train_module, "COMPILE_BACKEND", "eager")
    data = write_binary(tmp_path / "data", per_batch=10, test=20).parent  # 30 training images: batches of 16 and 14
    config = small_config(epochs=2, amp="off")
    plain = quiet_train(config, tmp_path / "plain", data)
    compiled = quiet_train(config.replace(compile=True), tmp_path / "compiled", data)
    a, b = load_checkpoint(tmp_path / "plain")["model"], load_checkpoint(tmp_path / "compiled")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain["compile_seconds"] is None and compiled["compile_seconds"] > 0


# ---------------------------------------------------------------- what a newcomer tripped on (issue 23)


def test_a_stopped_run_says_how_to_resume_and_resumes_on_its_own_data(tmp_path, capsys, monkeypatch):
    """status.json names the epoch the run is in; Ctrl-C's last line is the command that resumes the
    run; that command, without --data-dir, trains on the data the run recorded (not the cache)."""
    import cifarlab.training.train as train_module
    from cifarlab.cli import main

    data = write_binary(tmp_path / "data", per_batch=10, test=20).parent
    out = tmp_path / "my run"
    seen = []
    real_epoch = train_module.train_epoch

    def epoch_then_stop(learner, splits, config, desc, progress, epoch, log):
        seen.append(RunDir(out).status())
        if epoch == 2 and len(seen) == 2:
            raise KeyboardInterrupt
        return real_epoch(learner, splits, config, desc, progress, epoch, log)

    monkeypatch.setattr(train_module, "train_epoch", epoch_then_stop)
    argv = [
        "train",
        "--preset",
        "paper",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--val-size",
        "10",
        "--quiet",
        "--set",
        "model_options.widths=[8, 8, 8, 8, 16, 16, 16]",
        "--set",
        "model_options.fc_widths=[16, 16]",
        "--device",
        "cpu",
    ]
    assert main([*argv, "--data-dir", str(data), "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"cifarlab train: interrupted; resume it with: cifarlab train --resume '{out}'"
    assert [(s["status"], s["epoch"], s["current_epoch"]) for s in seen] == [("running", 0, 1), ("running", 1, 2)]
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "nowhere"))  # the default location has no data
    assert main(["train", "--resume", str(out), "--quiet", "--device", "cpu"]) == 0
    assert json.loads((out / "results.json").read_text())["epochs"] == 2
    assert [s.get("current_epoch") for s in seen[2:]] == [2]


def test_off_a_terminal_a_long_epoch_prints_step_lines_with_the_time_left():
    from cifarlab.training.progress import StepProgress, duration

    lines, now = [], [0.0]
    with StepProgress(100, "epoch 3/8", enabled=True, log=lines.append, every=60, clock=lambda: now[0], terminal=False) as bar:
        for _ in range(100):
            now[0] += 1.5  # 150 s for the epoch
            bar.update()
    assert lines == ["epoch 3/8: step 40/100, about 1m30s left in this epoch", "epoch 3/8: step 80/100, about 30s left in this epoch"]
    quiet = []
    with StepProgress(100, "e", enabled=False, log=quiet.append, clock=lambda: now[0], terminal=False) as bar:
        now[0] += 1000
        bar.update()
    assert quiet == [] and [duration(s) for s in (5, 185, 7440)] == ["5s", "3m05s", "2h04m"]
