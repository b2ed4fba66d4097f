"""The GPU suite's CPU dry run, `python benchmarks/gpu_suite.py --device cpu --smoke`, as a separate
process the way it runs on the GPU machine: a broken suite is found here, not in a GPU slot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifarlab.training.presets import PRESETS
from conftest import write_binary

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["environment", "cuda_tests", "paper_epoch", "throughput", "profile", "time_to_accuracy"]


def run_suite(out: Path, data: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "CIFARLAB_DATA": str(data)}
    env.pop("OUT", None)
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--device", "cpu", "--smoke", "--out", str(out), *extra]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = json.loads((out / "gpu_suite.json").read_text())
    return done, report


@pytest.mark.slow
def test_smoke_run_does_every_step_and_writes_one_json(tmp_path):
    data = write_binary(tmp_path / "data", per_batch=60, test=100).parent
    done, report = run_suite(tmp_path / "out", data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.listdir(tmp_path / "out") == ["gpu_suite.json"]
    assert report["finished"] and report["smoke"] and report["running"] is None
    assert list(report["steps"]) == STEPS
    assert {name: step["status"] for name, step in report["steps"].items()} == dict.fromkeys(STEPS, "ok")
    assert report["data"] == {"source": str(data / "cifar-10-batches-bin"), "train_images": 200, "test_images": 64}
    env = report["steps"]["environment"]["result"]
    assert env["device"] == "cpu" and env["torch_version"] and "pytest" in env["optional_packages"]

    # the CUDA tests ran under pytest and every one was skipped for want of a GPU: none passed silently
    tests = report["steps"]["cuda_tests"]["result"]["tests"]
    assert len(tests) >= 10 and {(t["outcome"], t["message"]) for t in tests} == {("skipped", "needs CUDA")}

    paper = report["steps"]["paper_epoch"]["result"]
    assert paper["float32"]["epoch_seconds"] > 0 and paper["report"]["total_seconds"] == 2023
    throughput = report["steps"]["throughput"]["result"]["presets"]
    assert set(throughput) == set(PRESETS)
    assert all(p["training"]["images_per_second"] > 0 and p["inference"]["bfloat16"]["images_per_second"] > 0 for p in throughput.values())

    # no tensor from Python data and no wait for the device in any training step (on a GPU: no copy, no sync)
    profile = report["steps"]["profile"]["result"]
    assert set(profile["host_traffic_per_step"].values()) == {0} and profile["top_ops_by_self_cpu"]

    timed = report["steps"]["time_to_accuracy"]["result"]["presets"]
    assert set(timed) == {"fast", "airbench94"}
    for preset in timed.values():
        (run,) = preset["runs"]
        assert 0 <= run["test_accuracy"] <= 1 and run["train_seconds"] > 0 and run["eval_seconds"] > 0
        assert preset["warm_up"]["seconds"] > 0 and run["compile_seconds"] is None
        assert preset["test_accuracy"]["n"] == 1


def test_a_spent_budget_skips_every_step_with_the_reason_and_still_writes_the_json(tmp_path):
    done, report = run_suite(tmp_path / "out", tmp_path / "no-data", "--budget-seconds", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["finished"] and report["data"]["source"].startswith("random images (no CIFAR-10 data")
    assert list(report["steps"]) == STEPS
    for step in report["steps"].values():
        assert step["status"] == "skipped" and step["reason"].startswith("time budget:")
