"""Device and dtype resolution, bf16 autocast on the CPU (forced, so it runs on every CPU), and malloc."""

import json
import os
import platform
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cifarlab import runtime
from cifarlab.common.checkpoint import load_checkpoint
from cifarlab.inference.evaluate import evaluate_checkpoint
from cifarlab.models import build_model
from cifarlab.runtime import DeviceError, autocast, autocast_dtype, resolve_device, use_amp

CPU = torch.device("cpu")


@pytest.fixture
def native(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) native bf16."""

    def pretend(value: bool):
        runtime.native_bf16.cache_clear()
        monkeypatch.setenv("CIFARLAB_NATIVE_BF16", "1" if value else "0")

    yield pretend
    runtime.native_bf16.cache_clear()


@pytest.mark.parametrize("has_bf16", [True, False])
def test_amp_settings_resolve_to_a_dtype(native, has_bf16):
    native(has_bf16)
    assert autocast_dtype("auto", CPU) == ("bfloat16" if has_bf16 else "float32")
    assert autocast_dtype("bf16", CPU) == "bfloat16"  # forced: emulated where not native
    assert autocast_dtype("off", CPU) == "float32"
    assert use_amp(True, CPU) and not use_amp(False, CPU)


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_bf16_autocast_training_step_on_cpu():
    torch.manual_seed(0)
    model = build_model("paper", widths=[8, 8, 8, 8, 16, 16, 16], fc_widths=[16, 16])
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with autocast(CPU, True):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    assert logits.dtype == torch.bfloat16  # it really computed in bf16
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_run_records_resolved_dtypes_and_evaluate_matches_results(tiny_run, tmp_path):
    """tiny_run trains with amp="bf16": every file says bfloat16, never "auto"; the final test figure
    is computed in float32, exactly as `cifarlab evaluate` computes it, on any CPU."""
    config = json.loads((tiny_run / "config.json").read_text())
    results = json.loads((tiny_run / "results.json").read_text())
    assert config["autocast_dtype"] == "bfloat16"
    assert results["autocast_dtype"] == "bfloat16" and results["eval_dtype"] == "float32"
    assert load_checkpoint(tiny_run)["meta"]["train_dtype"] == "bfloat16"
    result, _ = evaluate_checkpoint(tiny_run, tiny_run.parent / "data", "cpu", output=tmp_path / "e.json")
    assert result["dtype"] == "float32"
    assert result["test_accuracy"] == results["test_accuracy"]
    assert result["test_loss"] == pytest.approx(results["test_loss"], rel=1e-6)
    bf16, _ = evaluate_checkpoint(tiny_run, tiny_run.parent / "data", "cpu", output=tmp_path / "b.json", amp="bf16")
    assert bf16["dtype"] == "bfloat16" and bf16["test_loss"] != result["test_loss"]


def test_results_record_processor_and_where_the_seconds_went(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    assert results["processor"] and results["processor"] != "unknown CPU"
    glibc = platform.libc_ver()[0] == "glibc" and os.environ.get("CIFARLAB_MALLOC") != "system"
    assert results["malloc_keeps_freed_memory"] is glibc
    timing = results["timing"]
    assert set(timing) == {
        "setup_seconds",
        "training_seconds",
        "validation_seconds",
        "test_evaluation_seconds",
        "training_plus_test_evaluation_seconds",
        "wall_seconds",
    }
    assert all(v >= 0 for v in timing.values())
    parts = timing["setup_seconds"] + timing["training_seconds"] + timing["validation_seconds"] + timing["test_evaluation_seconds"]
    assert parts <= timing["wall_seconds"] * 1.001 and parts > 0.5 * timing["wall_seconds"]
    assert timing["training_seconds"] == pytest.approx(
        sum(json.loads(line)["train_seconds"] for line in (tiny_run / "metrics.jsonl").read_text().splitlines())
    )


def test_cudnn_autotuning_is_on_for_cuda_training_unless_determinism_is_asked(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    runtime.tune_for_training(CPU)
    assert torch.backends.cudnn.benchmark is False  # nothing to tune on a CPU
    runtime.tune_for_training(torch.device("cuda"))  # only sets a flag: runs without a GPU
    assert torch.backends.cudnn.benchmark is True
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    runtime.tune_for_training(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is False


def test_deterministic_training_is_recorded_and_repeatable(tiny_binary, tmp_path):
    from cifarlab.training.presets import get_preset
    from cifarlab.training.train import train

    config = get_preset("fast").replace(
        epochs=1, low_res_epochs=0, mid_res_epochs=0, batch_size=32, val_size=20, deterministic=True, amp="off", model_options={"widths": [8, 16, 16]}
    )
    lines = []
    first = train(config, tmp_path / "a", data_dir=tiny_binary, device="cpu", progress=False, log=lines.append)
    second = train(config, tmp_path / "b", data_dir=tiny_binary, device="cpu", progress=False, log=lambda s: None)
    assert first["deterministic"] is True and first["test_loss"] == second["test_loss"]
    assert sum(line.startswith("deterministic: ") for line in lines) == 1  # one line on what could not be
    assert not torch.are_deterministic_algorithms_enabled()  # switched back off afterwards
    a, b = load_checkpoint(tmp_path / "a")["model"], load_checkpoint(tmp_path / "b")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# Ten steps of element-wise work on a 64 MB tensor (two 64 MB temporaries each), after twenty to
# warm up: glibc unmaps each freed temporary and faults in fresh pages for the next (320,000
# faults here), unless told to keep freed memory (none).
_FAULTS_OF_TEN_STEPS = """
import resource, torch
from cifarlab.runtime import keep_freed_memory
kept = keep_freed_memory()
x = torch.ones(1000, 16, 32, 32)
def faults(steps):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        (torch.relu(x) * 2).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(20)
print(kept, faults(10))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_memory tunes glibc's malloc only")
def test_training_keeps_freed_memory_so_a_step_faults_in_no_fresh_pages():
    def run(malloc: str) -> tuple[str, int]:
        env = {**os.environ, "CIFARLAB_MALLOC": malloc}
        out = subprocess.run([sys.executable, "-c", _FAULTS_OF_TEN_STEPS], env=env, capture_output=True, text=True, check=True)
        kept, faults = out.stdout.split()
        return kept, int(faults)

    kept, kept_faults = run("keep")
    system, system_faults = run("system")
    assert (kept, system) == ("True", "False")
    assert kept_faults * 10 < system_faults  # 320,000 in 4 KB pages (640 with huge pages always on) against 0
