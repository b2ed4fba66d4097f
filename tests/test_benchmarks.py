"""benchmarks/time_to_accuracy.py end to end on tiny fake data: several presets in one run, the anchor ratio, the plot."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import write_binary

ROOT = Path(__file__).resolve().parents[1]


def test_time_to_accuracy_times_presets_against_the_anchor(tmp_path):
    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    out, png = tmp_path / "tta.json", tmp_path / "tta.png"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "time_to_accuracy.py"),
        "--preset",
        "airbench94",
        "--seeds",
        "1",
        "--preset",
        "quick",
        "--seeds",
        "2",
        "--preset",
        "airbench94",
        "--seeds",
        "1",
        "--with",
        "batch_size=20",
        "--set",
        "epochs=1",
        "--set",
        "val_size=20",
        "--set",
        "batch_size=40",
        "--set",
        "model_options.widths=[8,16,16]",
        "--device",
        "cpu",
        "--data-dir",
        str(data),
        "--output",
        str(out),
        "--plot",
        str(png),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert list(report["presets"]) == ["airbench94", "quick", "airbench94 batch_size=20"] and report["processor"]
    smaller = report["presets"]["airbench94 batch_size=20"]  # --with: that entry only, over every --set
    assert smaller["preset"] == "airbench94" and smaller["config"]["batch_size"] == 20 and smaller["config"]["epochs"] == 1
    anchor, quick = report["presets"]["airbench94"], report["presets"]["quick"]
    assert len(anchor["runs"]) == 1 and len(quick["runs"]) == 2 and [r["seed"] for r in quick["runs"]] == [0, 1]
    assert anchor["training_time_vs_airbench94"] == 1.0
    ratio = quick["training_seconds"]["mean"] / anchor["training_seconds"]["mean"]
    assert abs(quick["training_time_vs_airbench94"] - ratio) < 1e-9
    assert quick["config"]["model_options"]["widths"] == [8, 16, 16] and quick["config"]["epochs"] == 1
    assert quick["autocast_dtype"] in ("bfloat16", "float32")
    run = quick["runs"][0]
    assert set(run["timing"]) >= {"training_seconds", "test_evaluation_seconds", "setup_seconds"}
    assert run["curve"][0]["training_seconds"] == run["timing"]["training_seconds"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_throughput_measures_any_registered_model_with_a_preset_recipe(tmp_path):
    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    out = tmp_path / "tp.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "throughput.py"),
        "--preset",
        "he2016",
        "--model",
        "resnet20",
        "--set",
        "batch_size=16",
        "--images",
        "32",
        "--repeats",
        "1",
        "--amp",
        "bf16",
        "--device",
        "cpu",
        "--data-dir",
        str(data),
        "--output",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["model"] == "resnet20" and result["batch_size"] == 16 and result["steps_per_pass"] == 2
    assert result["autocast_dtype"] == "bfloat16" and result["processor"] and result["params"] == 269_722
    assert result["threads"] >= 1 and result["malloc_keeps_freed_memory"] in (True, False)
    refused = {
        "--preset nosuch": "unknown preset 'nosuch'",
        "--model nosuch": "nosuch",
        "--images 0": "--images 0: at least 1",
        "--set model_options.widths=[8,16]": "bad options for model 'fast'",
    }
    for bad, message in refused.items():
        out.unlink(missing_ok=True)
        args = bad.split() if bad.startswith("--preset") else ["--preset", "quick", *bad.split()]
        done = subprocess.run([*cmd[:2], *args, "--output", str(out)], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 2 and message in done.stderr.splitlines()[-1] and not out.exists()


def test_whiten_bias_gradient_times_both_kinds_of_step_alternately(tmp_path):
    out = tmp_path / "wb.json"
    script = ROOT / "benchmarks" / "whiten_bias_gradient.py"
    tiny = ["--set", "model_options.widths=[8,16,16]", "--set", "batch_size=4", "--set", "amp=bf16"]
    cmd = [sys.executable, str(script), "--preset", "fast", *tiny, "--steps", "3", "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert len(result["seconds_per_step_bias_learning"]) == len(result["seconds_per_step_bias_stopped"]) == 3
    assert result["batch_size"] == 4 and result["model_options"]["widths"] == [8, 16, 16] and result["autocast_dtype"] == "bfloat16"
    assert result["speedup"] == result["median_learning"] / result["median_stopped"] and "stopped" in done.stdout
    refused = {
        "--preset paper": "--preset paper: its model 'paper' has no whitening layer",
        "--steps 0": "--steps 0: at least 1",
        "--set model_options.widths=[8,16]": "bad options for model 'fast'",
    }
    for bad, message in refused.items():
        out.unlink(missing_ok=True)
        done = subprocess.run([sys.executable, str(script), *bad.split(), "--output", str(out)], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 2 and message in done.stderr.splitlines()[-1] and not out.exists()
