"""Distributed training on CPU with gloo, two processes.

The library-level checks run in two processes started once by torch.multiprocessing (module
fixture `spawned`); the command-level ones go through torchrun exactly as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.common import distributed
from cifarlab.common.checkpoint import load_checkpoint
from cifarlab.common.distributed import evaluate_sharded
from cifarlab.common.metrics import evaluate
from cifarlab.common.runfiles import read_metrics
from cifarlab.data import MEAN, STD, DataError
from cifarlab.data.augment import augment, normalize
from cifarlab.inference.evaluate import evaluate_checkpoint
from cifarlab.models import build_model
from cifarlab.training.learner import Learner, Splits, train_epoch
from cifarlab.training.optim import Schedule, build_optimizer
from cifarlab.training.presets import get_preset
from conftest import write_binary

WORLD = 2
BATCH = 31  # shards of 15 and 16 images: unequal on purpose
EVAL_IMAGES = 45  # not divisible by 2
NO_DROPOUT = {"widths": [8, 8, 8, 8, 16, 16, 16], "fc_widths": [16, 16], "conv_dropout": 0.0, "dropout2d": 0.0, "fc_dropout": 0.0}
# float32 pinned: these compare exact arithmetic, which bf16 autocast (auto on a CPU with native bf16) rounds away
STEP_CONFIG = get_preset("paper").replace(batch_size=BATCH, crop_pad=2, flip=True, momentum=0.9, label_smoothing=0.1, amp="off")


def plain_net() -> nn.Module:
    """No BatchNorm, no dropout: one DDP step must equal one single-process step."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return build_model("paper", **NO_DROPOUT)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (BATCH,), generator=g)


def eval_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 256, (EVAL_IMAGES, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (EVAL_IMAGES,), generator=g)


def one_step(model: nn.Module) -> dict[str, torch.Tensor]:
    """One training step of `model` (wrapped in DDP when a process group exists) through train_epoch."""
    x, y = batch()
    empty = x[:0], y[:0]
    splits = Splits(x, y, *empty, *empty, classes=(), source="test")
    optimizer = build_optimizer(model, STEP_CONFIG)
    learner = Learner(model, optimizer, Schedule(optimizer, STEP_CONFIG, 1), None, torch.Generator().manual_seed(3))
    if distributed.is_distributed():
        learner.trainee = distributed.wrap_model(model, torch.device("cpu"))
    record = train_epoch(learner, splits, STEP_CONFIG, progress=False)
    assert record["steps"] == 1
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.init_from_env("cpu")
    try:
        results = {"plain": one_step(plain_net()), "bn": one_step(bn_net())}
        x, y = eval_data()
        ev = evaluate_sharded(bn_net().eval(), x, y, MEAN, STD, batch_size=8)
        results["eval"] = {"loss": ev.loss, "accuracy": ev.accuracy, "confusion": ev.confusion}
        results["main_first"] = main_first_outcomes()
        torch.save(results, Path(out) / f"rank{rank}.pt")
        # both processes done before either tears down gloo: a peer that closes its connections
        # while the other still destroys its group has aborted a worker ("terminate called ...")
        distributed.barrier()
    finally:
        distributed.cleanup()


def main_first_outcomes() -> dict:
    """Who ran the body and what each process raised, when rank 0 fails and when rank 1 fails."""
    outcome = {}
    for failing in (0, 1):
        ran = False
        try:
            with distributed.main_first():
                ran = True
                if distributed.rank() == failing:
                    raise DataError(f"rank {failing} could not read the data")
        except DataError as e:
            outcome[failing] = (ran, str(e))
    return outcome


@pytest.fixture
def one_thread():
    """The references run on one thread like each worker: CPU kernels round differently with
    another thread count (up to 1e-3 relative in these BatchNorm gradients, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("spawned")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_one_ddp_step_equals_one_single_process_step(spawned, one_thread):
    expected = one_step(plain_net())  # here: no process group, the whole batch in one process
    for name, value in expected.items():
        assert torch.equal(spawned[0]["plain"][name], spawned[1]["plain"][name])  # every process holds one model
        torch.testing.assert_close(spawned[0]["plain"][name], value, rtol=1e-5, atol=1e-6)


def test_per_process_batchnorm_normalises_each_shard_by_itself(spawned, one_thread):
    """With BatchNorm (per-process statistics), a DDP step equals a single-process step in which
    each shard is normalised by its own statistics and the loss weighted by shard size."""
    model = bn_net()
    x, y = batch()
    g = torch.Generator().manual_seed(3)
    order = torch.randperm(BATCH, generator=g)
    x = augment(normalize(x[order], MEAN, STD), STEP_CONFIG.crop_pad, STEP_CONFIG.flip, g).contiguous(memory_format=torch.channels_last)
    y = y[order]
    optimizer = build_optimizer(model, STEP_CONFIG)
    half = BATCH // 2
    loss = sum(F.cross_entropy(model(x[s]), y[s], label_smoothing=0.1, reduction="sum") for s in (slice(0, half), slice(half, BATCH)))
    (loss / BATCH).backward()
    optimizer.step()
    for name, value in model.named_parameters():
        assert torch.equal(spawned[0]["bn"][name], spawned[1]["bn"][name])
        torch.testing.assert_close(spawned[0]["bn"][name], value, rtol=1e-5, atol=1e-6)
    full_batch_step = one_step(bn_net())  # and it is not the full-batch step: the trade-off is real
    assert not all(torch.allclose(full_batch_step[k], v, atol=1e-6) for k, v in model.named_parameters())


def test_distributed_evaluation_counts_every_image_once(spawned, one_thread):
    x, y = eval_data()
    alone = evaluate(bn_net().eval(), x, y, MEAN, STD, batch_size=8)
    for result in spawned:
        assert torch.equal(result["eval"]["confusion"], alone.confusion)
        assert int(result["eval"]["confusion"].sum()) == EVAL_IMAGES
        assert result["eval"]["accuracy"] == alone.accuracy
        assert result["eval"]["loss"] == pytest.approx(alone.loss, rel=1e-6)
    assert spawned[0]["eval"] == {**spawned[1]["eval"], "confusion": spawned[0]["eval"]["confusion"]}  # bitwise alike


def test_main_first_failure_reaches_every_process(spawned):
    # rank 0 fails first: nobody else runs the body, everyone raises rank 0's error
    assert spawned[0]["main_first"][0] == (True, "rank 0 could not read the data")
    assert spawned[1]["main_first"][0] == (False, "rank 0 could not read the data")
    # rank 1 fails after rank 0 succeeded: rank 0 raises rank 1's error too
    assert spawned[0]["main_first"][1] == (True, "rank 1 could not read the data")
    assert spawned[1]["main_first"][1] == (True, "rank 1 could not read the data")


# ---------------------------------------------------------------- through torchrun, as a user runs it


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), "-m", "cifarlab", "train", *args]


def child_env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_schedule_and_weights(tmp_path):
    data = write_binary(tmp_path / "data", per_batch=20, test=21).parent  # 80 training, 20 val, 21 test images
    flags = [
        "--preset",
        "paper",
        "--data-dir",
        str(data),
        "--device",
        "cpu",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--val-size",
        "20",
        "--crop-pad",
        "2",
        "--flip",
        "--momentum",
        "0.9",
        "--quiet",
    ]
    straight = subprocess.Popen(
        torchrun(*flags, "--out", str(tmp_path / "straight")), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    killed = tmp_path / "killed"
    victim = subprocess.Popen(
        torchrun(*flags, "--out", str(killed)), env=child_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600  # generous: the CPU may be shared with other work
    while not read_metrics(killed / "metrics.jsonl")[0] and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)  # torchrun and both workers, without warning
    victim.wait()
    assert json.loads((killed / "status.json").read_text())["status"] == "running"  # killed, not stopped cleanly
    assert 1 <= load_checkpoint(killed)["epoch"] < 3

    resumed = subprocess.run(
        torchrun("--resume", str(killed), "--data-dir", str(data), "--device", "cpu", "--quiet"),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout and resumed.stdout.count("test accuracy") == 1  # rank 0 alone prints
    assert straight.wait(timeout=300) == 0, straight.stdout.read()

    a, b = read_metrics(tmp_path / "straight" / "metrics.jsonl")[0], read_metrics(killed / "metrics.jsonl")[0]
    assert [m["epoch"] for m in b] == [1, 2, 3]
    keys = ("lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "steps")
    assert [{k: m[k] for k in keys} for m in a] == [{k: m[k] for k in keys} for m in b]
    wa, wb = load_checkpoint(tmp_path / "straight")["model"], load_checkpoint(killed)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    results = json.loads((killed / "results.json").read_text())
    assert results["world_size"] == 2 and results["epochs"] == 3

    # the two processes' test evaluation is the one-process evaluation of the saved weights
    alone, _ = evaluate_checkpoint(killed, data, device="cpu", output=tmp_path / "alone.json")
    assert alone["test_accuracy"] == results["test_accuracy"]
    assert alone["per_class_accuracy"] == results["per_class_accuracy"]
    assert alone["test_loss"] == pytest.approx(results["test_loss"], rel=1e-6)


def test_missing_data_without_network_fails_every_process_fast(tmp_path):
    dead_proxy = "http://127.0.0.1:9"  # no network, whatever this machine has: every download is refused
    env = child_env(https_proxy=dead_proxy, HTTPS_PROXY=dead_proxy, no_proxy="", NO_PROXY="")
    start = time.monotonic()
    done = subprocess.run(
        torchrun("--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("cifarlab train: error:")]
    assert len(errors) == WORLD and len(set(errors)) == 1, done.stderr
    assert "download" in errors[0] and str(tmp_path / "empty") in errors[0]
    assert elapsed < 60  # interpreter and torch start-up of three processes included; no timeout waited out
    assert not (tmp_path / "run").exists() and list((tmp_path / "empty").iterdir()) == []
