"""Sweep throughput on this machine: trials per hour with 1 and 2 workers, and what the study's
database costs per trial, on SQLite (the default) and on PostgreSQL.

    PYTHONPATH=src python benchmarks/sweep_workers.py [--trials 12] [--out benchmarks/results/sweep-workers.json]

Tiny trials (the paper net at widths 8-16, 1 epoch on 40 fake images): the figure is the sweep
machinery's, not a network's. Each sweep is a fresh `cifarlab sweep` process, timed from start to
exit (interpreter, torch import and data loading included, as a user sees it).

The database cost is the storage calls one trial makes (take it from the queue with its first
heartbeat, look for stale trials, store its folder, worker and results, tell the value), timed
with no training between them, plus its share of enqueuing. PostgreSQL is a throw-away local
cluster (tests/postgres_server.py); it is skipped, with the reason, where one cannot start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
ANY_COUNT = "CIFARLAB_TEST_ANY_RECORD_COUNT"  # lets 20-image batch files load (see tests/conftest.py)
SPEC = """base = "paper"
train_subset = 40
[fixed]
epochs = 1
batch_size = 40
val_size = 20
"model_options.widths" = [8, 8, 8, 8, 16, 16, 16]
"model_options.fc_widths" = [16, 16]
[grid]
seed = SEEDS
"""


def fake_data(folder: Path) -> Path:
    """Tiny CIFAR-10 binary batches: 20 random images per file."""
    data = folder / "data" / "cifar-10-batches-bin"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = (np.arange(20) % 10).astype(np.uint8)[:, None]
        (data / name).write_bytes(np.concatenate([labels, rng.integers(0, 256, (20, 3072), dtype=np.uint8)], axis=1).tobytes())
    (data / "batches.meta.txt").write_text(
        "\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]) + "\n"
    )
    return folder / "data"


def sweep_rate(folder: Path, data: Path, trials: int, workers: int, storage: str | None, name: str) -> dict:
    spec = folder / f"{name}.toml"
    spec.write_text(SPEC.replace("SEEDS", json.dumps(list(range(trials)))))
    argv = [
        sys.executable,
        "-m",
        "cifarlab",
        "sweep",
        str(spec),
        "--data-dir",
        str(data),
        "--device",
        "cpu",
        "--quiet",
        "--workers",
        str(workers),
        *(["--storage", storage] if storage else []),
    ]
    started = time.perf_counter()
    done = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(ROOT / "src"), ANY_COUNT: "1"}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    return {"workers": workers, "trials": trials, "seconds": round(seconds, 2), "trials_per_hour": round(trials * 3600 / seconds)}


def storage_cost(url: str | None, folder: Path, trials: int, name: str) -> dict:
    """Seconds of storage calls per trial, without training: what a trial's bookkeeping costs."""
    import optuna

    from cifarlab.experiments.spec import load_spec
    from cifarlab.experiments.study import (
        enqueue,
        open_storage,
        open_study,
        quiet,
        storage_for,
        take_trial,
    )

    spec_path = folder / f"{name}.toml"
    spec_path.write_text(SPEC.replace("SEEDS", json.dumps(list(range(trials)))))
    spec = load_spec(spec_path)
    (folder / name).mkdir()
    where = storage_for(url, folder / name)
    rdb = open_storage(where)
    study = open_study(rdb, where, spec)
    started = time.perf_counter()
    enqueue(rdb, where, study, spec)
    enqueued = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(trials):
        with quiet(optuna):
            optuna.storages.fail_stale_trials(study)
        trial = take_trial(study, rdb)
        trial.set_user_attr("run", str(folder / name / trial.user_attrs["variant"]))
        trial.set_user_attr("worker", "bench")
        rdb.record_heartbeat(trial._trial_id)
        trial.set_user_attr("result", {"status": "finished", "reason": None, "val_accuracy": 0.1, "test_accuracy": 0.1})
        study.tell(trial, 0.1)
    per_trial = (time.perf_counter() - started) / trials
    return {"seconds_per_trial": round(per_trial + enqueued / trials, 4), "of_which_enqueue": round(enqueued / trials, 4)}


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), platform.processor())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep-workers.json")
    args = parser.parse_args()
    import postgres_server

    os.environ[ANY_COUNT] = "1"
    result: dict = {
        "cpu": cpu_model(),
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "trials": args.trials,
        "note": "tiny trials (1 epoch, 40 images); wall time of the whole command, process start and torch import included",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    server, why = postgres_server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            data = fake_data(folder)
            storages = {"sqlite": None, **({"postgresql": server.url()} if server else {})}
            for label, url in storages.items():
                entry = {
                    "sweeps": [sweep_rate(folder, data, args.trials, w, url, f"{label}{w}") for w in (1, 2)],
                    "storage": storage_cost(url, folder, 50, f"{label}-cost"),
                }
                result[label] = entry
                print(label, json.dumps(entry), flush=True)
            if server is None:
                result["postgresql"] = {"skipped": why}
    finally:
        if server:
            postgres_server.stop(server)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
