"""`cifarlab train --mlflow`: tracking into a real MLflow tracking server (started here on a free
port over SQLite, stopped after), the logged pyfunc model, sweeps as nested runs, and failures
that cost no training."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cifarlab.cli import main
from cifarlab.data import load_cifar10
from cifarlab.training.config import dotted_keys
from cifarlab.training.presets import get_preset
from cifarlab.training.tracking import (
    PARENT_ENV,
    RUN_FILE,
    Tracker,
    TrackingError,
)
from cifarlab.training.train import resume, train
from conftest import write_binary

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402  (only once importorskip has found mlflow)

MLFLOW = [sys.executable, "-m", "mlflow"]
TINY = {"epochs": 2, "val_size": 20, "batch_size": 32}  # the quick preset on 64 images: about a second an epoch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float = 90) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on 127.0.0.1 over SQLite with proxied local artifacts; skips the test when it cannot start."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        *MLFLOW,
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
    ]
    with open(folder / "server.log", "wb") as log:  # the server keeps its own copy of the file
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    if not wait_for(f"{url}/health", process):
        stop(process)
        pytest.skip(f"mlflow server did not start: {(folder / 'server.log').read_text()[-300:]}")
    return process, url


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    process, url = start_server(tmp_path_factory.mktemp("mlflow-server"))
    yield url
    stop(process)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_binary(folder, test=100)  # 100 test images: the PNGs the model and predict must agree on
    return folder


def tiny_config(**changes):
    return get_preset("quick").replace(**{**TINY, **changes})


def run_id_of(run: Path) -> str:
    return json.loads((run / RUN_FILE).read_text())["run_id"]


def train_tiny(run: Path, data: Path, lines: list | None = None, **changes) -> dict:
    log = lines.append if lines is not None else (lambda line: None)
    return train(tiny_config(**changes), run, train_subset=64, data_dir=data, device="cpu", progress=False, log=log)


@pytest.fixture(scope="module")
def tracked_run(server, data, tmp_path_factory) -> Path:
    """One tiny training logged to the server, its model registered: several tests read it."""
    run = tmp_path_factory.mktemp("tracked") / "run"
    lines: list[str] = []
    train_tiny(run, data, lines, mlflow=server, mlflow_register="cifarlab-tiny")
    assert lines[-1].startswith("mlflow: everything logged to MLflow run")
    return run


def test_what_is_logged_equals_the_run_folder(server, tracked_run, tmp_path):
    client = MlflowClient(server)
    logged = client.get_run(run_id_of(tracked_run))
    config = json.loads((tracked_run / "config.json").read_text())
    results = json.loads((tracked_run / "results.json").read_text())
    records = [json.loads(line) for line in (tracked_run / "metrics.jsonl").read_text().splitlines()]
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    train_config = {k: v for k, v in dotted_keys(config["train"]).items() if not k.startswith("mlflow")}
    expected = {k: json.dumps(v) if isinstance(v, (list, bool)) or v is None else str(v) for k, v in train_config.items()}
    assert logged.data.params == {**expected, "train_subset": "64"}
    assert logged.data.params["model_options.widths"] == str(get_preset("quick").model_options["widths"])
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds"):
        history = client.get_metric_history(logged.info.run_id, key)
        assert [(m.step, m.value) for m in history] == [(r["epoch"], r[key]) for r in records]
    metrics = logged.data.metrics
    for key in ("test_accuracy", "test_error", "seconds_per_epoch", "params", "test_loss"):
        assert metrics[key] == results[key]
    assert metrics["timing.wall_seconds"] == results["timing"]["wall_seconds"]
    assert metrics["total_train_seconds"] == results["train_seconds"]
    assert ("seconds_to_stabilise" in metrics) == (results["seconds_to_stabilise"] is not None)
    tags = logged.data.tags
    assert {k: tags[k] for k in ("preset", "model", "processor", "training_dtype", "torch_version")} == {
        "preset": "quick",
        "model": "fast",
        "processor": results["processor"],
        "training_dtype": results["autocast_dtype"],
        "torch_version": results["torch_version"],
    }
    assert tags["run_folder"] == str(tracked_run.resolve())
    assert {a.path for a in client.list_artifacts(logged.info.run_id)} >= {"config.json", "results.json", "model"}
    for name in ("config.json", "results.json"):
        copy = Path(client.download_artifacts(logged.info.run_id, name, str(tmp_path)))
        assert copy.read_bytes() == (tracked_run / name).read_bytes()


def png_folder(data: Path, folder: Path) -> tuple[list[Path], np.ndarray]:
    """The 100 test images as PNG files, and as the uint8 (N, 32, 32, 3) array MLflow's model takes."""
    from PIL import Image

    images = load_cifar10(data).test_images.permute(0, 2, 3, 1).numpy()
    folder.mkdir()
    files = [folder / f"{i:03d}.png" for i in range(len(images))]
    for file, image in zip(files, images):
        Image.fromarray(image).save(file)
    return files, images


def test_the_logged_model_predicts_as_cifarlab_predict(server, tracked_run, data, tmp_path, monkeypatch):
    files, images = png_folder(data, tmp_path / "pngs")
    assert len(files) == 100
    output = tmp_path / "predictions.json"
    assert main(["predict", str(tracked_run), str(tmp_path / "pngs"), "--top-k", "10", "--output", str(output), "--quiet"]) == 0
    predicted = {Path(p["path"]).name: p for p in json.loads(output.read_text())["predictions"]}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    for uri in (f"runs:/{run_id_of(tracked_run)}/model", "models:/cifarlab-tiny/1"):  # logged, and registered
        table = mlflow.pyfunc.load_model(uri).predict(images)
        assert len(table) == 100
        for file, (_, row) in zip(files, table.iterrows()):
            top = {entry["class"]: entry["prob"] for entry in predicted[file.name]["top_k"]}
            assert row["class"] == predicted[file.name]["top1"]
            assert {name: float(row[name]) for name in top} == top  # exactly, every class


def test_the_logged_model_has_a_signature_and_an_input_example(server, tracked_run, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    uri = f"runs:/{run_id_of(tracked_run)}/model"
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": (-1, 32, 32, 3)}}]
    assert [c["name"] for c in info.signature.outputs.to_dict()][:2] == ["class", "airplane"]
    assert info.saved_input_example_info is not None
    with pytest.raises(Exception, match="uint8|shape"):
        mlflow.pyfunc.load_model(uri).predict(np.zeros((1, 28, 28, 3), dtype=np.uint8))


@pytest.mark.slow
def test_mlflow_models_serve_answers_as_the_pyfunc_model(server, tracked_run, data, monkeypatch):
    """`mlflow models serve --env-manager local` (no environment download) on the logged model."""
    port = free_port()
    # its scoring server is the `uvicorn` command of this environment
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [
        *MLFLOW,
        "models",
        "serve",
        "-m",
        f"runs:/{run_id_of(tracked_run)}/model",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(f"http://127.0.0.1:{port}/ping", process, 120), "mlflow models serve did not start"
        images = load_cifar10(data).test_images.permute(0, 2, 3, 1).numpy()[:10]
        body = json.dumps({"inputs": images.tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            served = json.loads(answer.read())["predictions"]
    finally:
        stop(process)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    table = mlflow.pyfunc.load_model(f"runs:/{run_id_of(tracked_run)}/model").predict(images)
    assert len(served) == 10
    for row, (_, expected) in zip(served, table.iterrows()):
        assert row == {name: value if name == "class" else float(value) for name, value in expected.items()}


def test_a_stopped_and_resumed_run_is_one_mlflow_run_with_every_epoch_once(server, data, tmp_path):
    run = tmp_path / "run"

    def stop_after_epoch_1(record):
        raise KeyboardInterrupt  # as Ctrl-C after epoch 1 was checkpointed and logged

    with pytest.raises(KeyboardInterrupt):
        train(
            tiny_config(mlflow=server),
            run,
            train_subset=64,
            data_dir=data,
            device="cpu",
            progress=False,
            log=lambda line: None,
            on_epoch=stop_after_epoch_1,
        )
    client = MlflowClient(server)
    run_id = run_id_of(run)
    assert client.get_run(run_id).info.status == "KILLED"
    resume(run, data_dir=data, device="cpu", progress=False, log=lambda line: None)
    assert run_id_of(run) == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2]
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id], f"tags.run_folder = '{run.resolve()}'")) == 1


KILLED_AFTER_EPOCH_1 = """
import os, signal, sys
from cifarlab.training.presets import get_preset
from cifarlab.training.train import train
config = get_preset("quick").replace(epochs=2, val_size=20, batch_size=32, mlflow=sys.argv[1])
train(config, sys.argv[2], train_subset=64, data_dir=sys.argv[3], device="cpu", progress=False,
      on_epoch=lambda record: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_a_run_sigkilled_after_epoch_1_and_resumed_is_one_mlflow_run(server, data, tmp_path):
    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_EPOCH_1, server, str(run), str(data)], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-500:]
    client = MlflowClient(server)
    run_id = run_id_of(run)
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody could tell it otherwise
    resume(run, data_dir=data, device="cpu", progress=False, log=lambda line: None)
    assert run_id_of(run) == run_id and client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2]


def test_a_resume_logs_the_checkpointed_epoch_the_server_never_got(server, data, tmp_path, monkeypatch):
    """Killed after epoch 1's checkpoint but before its metrics reached MLflow: the resume logs it, then epoch 2."""
    original = Tracker._log_batch

    def killed_before_sending_epoch_1(self, what, **values):
        if what.startswith("epoch 1"):
            raise KeyboardInterrupt
        return original(self, what, **values)

    monkeypatch.setattr(Tracker, "_log_batch", killed_before_sending_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_tiny(tmp_path / "run", data, mlflow=server)
    monkeypatch.undo()
    client = MlflowClient(server)
    assert client.get_metric_history(run_id_of(tmp_path / "run"), "train_loss") == []
    resume(tmp_path / "run", data_dir=data, device="cpu", progress=False, log=lambda line: None)
    assert [m.step for m in client.get_metric_history(run_id_of(tmp_path / "run"), "train_loss")] == [1, 2]


def test_a_sweep_is_one_parent_run_with_a_child_per_variant(server, data, tmp_path):
    from cifarlab.experiments.sweep import load_spec, run_sweep

    spec = tmp_path / "lr.toml"
    spec.write_text(
        f'base = "quick"\ntrain_subset = 64\n[fixed]\nepochs = 1\nval_size = 20\nbatch_size = 32\n'
        f'mlflow = "{server}"\n[grid]\nlr = [0.1, 0.2, 0.3, 0.4]\n'
    )
    folder = tmp_path / "sweep"
    run_sweep(load_spec(spec), folder, data_dir=data, device="cpu", progress=False, log=lambda line: None)
    client = MlflowClient(server)
    parent = client.get_run(run_id_of(folder))
    assert parent.info.status == "FINISHED" and PARENT_ENV not in os.environ
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(p.name for p in folder.iterdir() if (p / "results.json").exists())
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.params["lr"] for c in children} == {"0.1", "0.2", "0.3", "0.4"}
    assert "leaderboard.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow  # a second server of its own, to kill: 10-80 s to start on 2 busy cores
def test_a_server_gone_mid_run_leaves_a_complete_run_folder(data, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: this test is about what happens after
    process, url = start_server(tmp_path / "doomed")
    run = tmp_path / "run"
    lines: list[str] = []
    try:
        train(
            tiny_config(mlflow=url),
            run,
            train_subset=64,
            data_dir=data,
            device="cpu",
            progress=False,
            log=lines.append,
            on_epoch=lambda record: record["epoch"] == 1 and stop(process),
        )
    finally:
        stop(process)
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2 and (run / "results.json").exists()
    assert any(line.startswith("mlflow: could not log epoch 2's metrics") for line in lines)
    closing = lines[-1]
    assert closing.startswith("mlflow: ") and "not logged: epoch 2's metrics, results" in closing
    assert f"the run folder {run} is complete" in closing


def test_an_unreachable_server_at_start_is_one_line_before_training(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    argv = [
        "train",
        "--preset",
        "quick",
        "--epochs",
        "1",
        "--val-size",
        "20",
        "--batch-size",
        "32",
        "--train-subset",
        "64",
        "--data-dir",
        str(data),
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(tmp_path / "run"),
        "--mlflow",
        url,
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"cannot reach the MLflow tracking store {url}" in err and "--mlflow-optional" in err
    assert not (tmp_path / "run").exists()  # nothing written: the check came first
    lines: list[str] = []
    train_tiny(tmp_path / "run", data, lines, mlflow=url, mlflow_optional=True, epochs=1)
    assert lines[0].startswith(f"mlflow: cannot reach the MLflow tracking store {url}") and "training without it" in lines[0]
    assert (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / RUN_FILE).exists()


def test_without_a_uri_the_run_goes_to_mlflows_default_store(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train_tiny(tmp_path / "run", data, mlflow="default", epochs=1)
    saved = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert saved["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow 3's default: ./mlflow.db
    logged = MlflowClient(saved["tracking_uri"]).get_run(saved["run_id"])
    assert logged.info.status == "FINISHED" and logged.data.params["model_options.widths"] == str(get_preset("quick").model_options["widths"])


def test_mlflow_missing_is_a_one_line_error(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the package were not installed
    argv = ["train", "--preset", "quick", "--epochs", "1", "--data-dir", str(data), "--out", str(tmp_path / "run"), "--mlflow"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == 'cifarlab train: error: --mlflow needs the mlflow package: pip install "cifarlab[mlflow]"'
    assert not (tmp_path / "run").exists()
    with pytest.raises(TrackingError):
        train_tiny(tmp_path / "api", data, mlflow="default")


def test_the_mlflow_flag_takes_an_optional_uri():
    from cifarlab.cli import build_parser, config_from_args

    def parsed(*flags):
        return config_from_args(build_parser().parse_args(["train", "--preset", "quick", *flags]))

    assert parsed().mlflow == "" and parsed("--mlflow").mlflow == "default"
    assert parsed("--mlflow", "http://tracking:5000", "--mlflow-register", "cifar").mlflow_register == "cifar"
    assert parsed("--mlflow", "http://tracking:5000").mlflow == "http://tracking:5000"
