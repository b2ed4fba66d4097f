"""What only a CUDA GPU can check: the training step under bf16 autocast and channels-last, an exact
resume, evaluate/predict/export/serve of a run trained on the GPU, `--compile`, and a one-process
NCCL DDP run with SyncBatchNorm.

Every test here is marked `cuda`: where torch sees no GPU, conftest skips them with the reason
"needs CUDA". `python benchmarks/gpu_suite.py` runs them on a GPU machine and records the outcome of
each; what needs a package that machine may lack (fastapi, onnx, Pillow) skips by name.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from cifarlab.common import distributed
from cifarlab.common.checkpoint import load_checkpoint
from cifarlab.common.rundir import RunDir
from cifarlab.data import load_cifar10
from cifarlab.inference.evaluate import evaluate_checkpoint
from cifarlab.inference.model import Predictor
from cifarlab.models import build_model
from cifarlab.runtime import autocast
from cifarlab.training.learner import build_learner, make_splits, train_epoch
from cifarlab.training.presets import get_preset
from cifarlab.training.train import resume, train
from conftest import write_binary

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda", 0)
SMALL_PAPER = {"widths": [8, 8, 8, 8, 16, 16, 16], "fc_widths": [16, 16]}
SMALL_FAST = {"widths": [8, 16, 16]}


def paper_config(**kw):
    base = dict(epochs=2, batch_size=16, val_size=20, crop_pad=2, flip=True, amp="bf16", model_options=SMALL_PAPER)
    return get_preset("paper").replace(**{**base, **kw})


def fast_config(**kw):
    return get_preset("fast").replace(
        **{**dict(epochs=2, low_res_epochs=1, mid_res_epochs=0, batch_size=32, val_size=20, model_options=SMALL_FAST), **kw}
    )


def quiet_train(config, out, data, device="cuda", **kw):
    return train(config, out, data_dir=data, device=device, progress=False, log=lambda s: None, **kw)


def same_weights(a, b) -> bool:
    a, b = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny fake CIFAR-10: 200 training and 40 test images."""
    return write_binary(tmp_path_factory.mktemp("cudadata") / "data", per_batch=40, test=40).parent


@pytest.fixture(scope="module")
def cuda_run(data, tmp_path_factory):
    """A finished 2-epoch run trained on the GPU under bf16 autocast (shared, read-only)."""
    out = tmp_path_factory.mktemp("cudarun") / "run"
    quiet_train(paper_config(), out, data)
    return out


@pytest.fixture
def deterministic(monkeypatch):
    """Deterministic kernels (cuDNN picks no algorithm by timing then), for bit-for-bit comparisons."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


# ---------------------------------------------------------------- the training step


def test_bf16_autocast_training_step_on_cuda(data):
    config = paper_config()
    splits = make_splits(load_cifar10(data, download=False), 20, CUDA)
    learner = build_learner(config, splits, CUDA, torch.Generator(CUDA).manual_seed(0))
    before = [p.detach().clone() for p in learner.model.parameters()]
    with autocast(CUDA, True):
        logits = learner.model(torch.randn(4, 3, 32, 32, device=CUDA))
    assert logits.dtype == torch.bfloat16  # it really computes in bf16 on the GPU
    record = train_epoch(learner, splits, config, progress=False)
    assert record["steps"] == 12 and 0 < record["train_loss"] < 10
    assert all(p.dtype == torch.float32 and p.device == CUDA for p in learner.model.parameters())  # master weights stay float32
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.model.parameters()))


def test_channels_last_training_keeps_the_layout_and_the_numbers(data, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare float32 with float32
    config = fast_config(amp="off", channels_last=True)
    splits = make_splits(load_cifar10(data, download=False), 20, CUDA)
    learner = build_learner(config, splits, CUDA, torch.Generator(CUDA).manual_seed(0))
    train_epoch(learner, splits, config, progress=False)
    convs = [m for m in learner.model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x = torch.randn(8, 3, 32, 32, device=CUDA)
    model = learner.model.eval()
    last = model(x.contiguous(memory_format=torch.channels_last))
    plain = build_model(config.model, **config.model_options).to(CUDA).eval()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(last, plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make_config", [paper_config, fast_config], ids=["paper", "fast"])
def test_resume_on_cuda_equals_an_uninterrupted_run(tmp_path, data, deterministic, make_config):
    config = make_config(epochs=3)
    quiet_train(config, tmp_path / "straight", data)

    def stop_after_epoch_1(line):
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "stopped", data_dir=data, device="cuda", progress=False, log=stop_after_epoch_1)
    assert load_checkpoint(tmp_path / "stopped")["epoch"] == 1
    resume(tmp_path / "stopped", data_dir=data, device="cuda", progress=False, log=lambda s: None)
    assert same_weights(tmp_path / "straight", tmp_path / "stopped")


def test_compile_trains_on_cuda_and_reports_its_time_apart(tmp_path, data):
    results = quiet_train(fast_config(compile=True), tmp_path / "compiled", data)
    assert results["compile_seconds"] > 0 and 0 <= results["test_accuracy"] <= 1
    assert RunDir(tmp_path / "compiled").status()["status"] == "finished"


# ---------------------------------------------------------------- a run trained on the GPU, used


def test_evaluate_on_cuda_matches_the_run_and_the_cpu(cuda_run, data, tmp_path):
    results = json.loads((cuda_run / "results.json").read_text())
    assert results["device"].startswith("cuda") and results["autocast_dtype"] == "bfloat16"
    on_gpu, _ = evaluate_checkpoint(cuda_run, data, "cuda", output=tmp_path / "gpu.json")
    assert on_gpu["test_accuracy"] == results["test_accuracy"]  # float32 on both, as train's final evaluation
    assert on_gpu["test_loss"] == pytest.approx(results["test_loss"], rel=1e-5)
    on_cpu, _ = evaluate_checkpoint(cuda_run, data, "cpu", output=tmp_path / "cpu.json")
    assert on_cpu["test_loss"] == pytest.approx(on_gpu["test_loss"], rel=1e-3)


def test_predict_on_cuda_gives_the_cpu_logits(cuda_run, data):
    images = load_cifar10(data, download=False).test_images
    gpu, cpu = Predictor(cuda_run, device="cuda"), Predictor(cuda_run, device="cpu")
    assert next(gpu.model.parameters()).device == CUDA
    torch.testing.assert_close(gpu.logits(images), cpu.logits(images), rtol=1e-2, atol=1e-2)  # TF32 convolutions on the GPU


def test_predict_command_on_cuda(cuda_run, data, tmp_path, capsys):
    image_module = pytest.importorskip("PIL.Image")
    from cifarlab.cli import main

    (tmp_path / "images").mkdir()
    for i, image in enumerate(load_cifar10(data, download=False).test_images[:4]):
        image_module.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "images" / f"{i}.png")
    argv = ["predict", str(cuda_run), str(tmp_path / "images"), "--device", "cuda", "--output", str(tmp_path / "p.json")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["files"] == 4 and report["errors"] == 0


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_of_a_cuda_trained_run(cuda_run, data, tmp_path, fmt):
    if fmt == "onnx":
        for package in ("onnx", "onnxruntime", "onnxscript"):
            pytest.importorskip(package)
    from cifarlab.inference.export import export_model

    path, info = export_model(cuda_run, fmt, tmp_path / f"model.{fmt}", data_dir=data, log=lambda s: None)
    assert path.exists() and info["check"]["max_abs_diff"] <= 1e-4 and info["check"]["images"].startswith("CIFAR-10")


def test_serve_on_cuda(cuda_run, data):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")  # the test client
    image_module = pytest.importorskip("PIL.Image")
    if not any(_importable(m) for m in ("python_multipart", "multipart")):
        pytest.skip("could not import 'python_multipart' (form uploads)")
    from fastapi.testclient import TestClient

    from cifarlab.serve import create_app

    image = load_cifar10(data, download=False).test_images[0]
    buffer = io.BytesIO()
    image_module.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    expected = Predictor(cuda_run, device="cuda")
    top1 = expected.top_k(expected.logits(image[None]), 1)[0][0][0]
    with TestClient(create_app(cuda_run, device="cuda")) as client:
        assert client.get("/health").json()["device"] == "cuda"
        answer = client.post("/predict", files={"file": ("img.png", buffer.getvalue(), "image/png")})
    assert answer.status_code == 200 and answer.json()["top1"] == top1


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- DDP on one GPU


@contextlib.contextmanager
def nccl_group_of_one():
    """A process group of one process on GPU 0 (NCCL), for one block. One GPU cannot hold two NCCL
    ranks, so SyncBatchNorm's cross-process reduction is not exercised; the conversion and a run through it are."""
    if not dist.is_nccl_available():
        pytest.skip("torch was built without NCCL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.cuda.set_device(CUDA)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, device_id=CUDA)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture
def wrapped(monkeypatch) -> list[nn.Module]:
    """Every module distributed.wrap_model returns during the test."""
    made, real = [], distributed.wrap_model

    def wrap(model, device, sync_bn=False):
        made.append(real(model, device, sync_bn))
        return made[-1]

    monkeypatch.setattr(distributed, "wrap_model", wrap)
    return made


def test_one_process_nccl_ddp_run_trains_like_a_plain_run(tmp_path, data, deterministic, wrapped):
    quiet_train(paper_config(), tmp_path / "plain", data, device="cuda:0")
    with nccl_group_of_one():
        results = quiet_train(paper_config(), tmp_path / "ddp", data, device="cuda:0")
    assert isinstance(wrapped[0], nn.parallel.DistributedDataParallel)
    assert results["world_size"] == 1 and RunDir(tmp_path / "ddp").status()["status"] == "finished"
    a, b = load_checkpoint(tmp_path / "plain")["model"], load_checkpoint(tmp_path / "ddp")["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_sync_batchnorm_run_on_nccl(tmp_path, data, wrapped):
    with nccl_group_of_one():
        quiet_train(fast_config(sync_bn=True), tmp_path / "sync", data, device="cuda:0")
        syncs = [m for m in wrapped[0].modules() if isinstance(m, nn.SyncBatchNorm)]
        assert len(syncs) == 6  # every BatchNorm of FastNet's three conv groups
        x = torch.randn(16, 8, 4, 4, device=CUDA)
        bn = nn.BatchNorm2d(8).to(CUDA)
        sync = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(8))).to(CUDA)
        torch.testing.assert_close(sync(x), bn(x))
        torch.testing.assert_close(sync[0].running_mean, bn.running_mean)
    plain = build_model("fast", **SMALL_FAST)
    plain.load_state_dict(load_checkpoint(tmp_path / "sync")["model"])  # the checkpoint is a plain model's
