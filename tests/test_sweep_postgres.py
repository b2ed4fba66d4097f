"""Sweeps on a real PostgreSQL server (a throw-away cluster this session starts, see
postgres_server.py): workers on two hosts share one study, a worker killed with SIGKILL loses
nothing, TPE workers side by side make exactly the budget, and optuna-dashboard serves the study.
Tiny trials (the fake data of conftest.py, a few epochs on 40 images)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import postgres_server
import pytest

from cifarlab.experiments.leaderboard import rows_from_folders
from cifarlab.experiments.spec import load_spec
from cifarlab.experiments.study import (
    open_storage,
    open_study,
    storage_for,
)

pytestmark = pytest.mark.postgres
SRC = str(Path(__file__).resolve().parents[1] / "src")
CLI = [sys.executable, "-m", "cifarlab", "sweep"]
HEAD = """
base = "paper"
train_subset = 40
[fixed]
epochs = EPOCHS
batch_size = 40
val_size = 20
"model_options.widths" = [8, 8, 8, 8, 16, 16, 16]
"model_options.fc_widths" = [16, 16]
"""


@pytest.fixture(scope="session")
def hosts():
    """Two network namespaces as worker hosts and the database's address on a bridge, or loopback."""
    address, names, why = postgres_server.make_hosts(2) if sys.platform == "linux" else (None, [], "not Linux")
    yield address, names, why
    postgres_server.remove_hosts(names)


@pytest.fixture(scope="session")
def postgres(hosts):
    server, why = postgres_server.start((hosts[0],) if hosts[0] else ())
    if server is None:
        pytest.skip(why)
    yield server
    postgres_server.stop(server)


def spec_file(folder: Path, body: str, name: str, epochs: int = 1) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(HEAD.replace("EPOCHS", str(epochs)) + body)
    return path


def trials_of(url: str, name: str) -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials()


def worker(spec: Path, url: str, data: Path, out: Path, *extra: str, netns: str | None = None) -> subprocess.Popen:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    argv = [
        *prefix,
        *CLI,
        str(spec),
        "--storage",
        url,
        "--out",
        str(out),
        "--data-dir",
        str(data),
        "--device",
        "cpu",
        "--quiet",
        "--heartbeat",
        "1",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_12_trial_grid_on_two_hosts_runs_each_trial_once_and_the_database_holds_the_leaderboard(postgres, hosts, tiny_binary, tmp_path):
    """Two workers as two hosts: network namespaces with their own addresses on a bridge, the database
    on a third (SUBNET.1 on a bridge); where the machine does not allow namespaces, two processes on loopback.
    The sweep folder is shared, as a shared filesystem would be."""
    address, names, why = hosts
    spec = spec_file(tmp_path, "[grid]\nlr = [0.01, 0.02, 0.03]\nseed = [0, 1, 2, 3]\n", "grid12", epochs=2)
    url = postgres.url(address or "127.0.0.1")
    workers = [worker(spec, url, tiny_binary, tmp_path / "grid12", netns=names[n] if address else None) for n in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = trials_of(postgres.url(), "grid12")
    done = sorted(t.user_attrs["variant"] for t in trials if t.state.name == "COMPLETE")
    assert len(trials) == 12 and done == sorted(v.name for v in load_spec(spec).variants)  # 12, each once
    assert len({t.user_attrs["worker"] for t in trials}) == 2, why  # both hosts took trials
    assert postgres_server.PASSWORD not in "".join(outputs)  # the URL is shown with *** for it
    # the leaderboard from the database alone (another machine, an empty folder) equals the run folders'
    loaded = load_spec(spec)
    from_folders = rows_from_folders(loaded, tmp_path / "grid12", [v.name for v in loaded.variants], {v.name: v.overrides for v in loaded.variants})
    rebuilt = subprocess.run(
        [*CLI, str(spec), "--storage", postgres.url(), "--out", str(tmp_path / "elsewhere"), "--leaderboard"],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads((tmp_path / "elsewhere" / "leaderboard.json").read_text()) == json.loads(json.dumps(from_folders))
    for path in (tmp_path / "grid12").rglob("*.json"):
        assert postgres_server.PASSWORD not in path.read_text(), path


def _running_trial_of(url: str, study: str, pid: int, folder: Path) -> str | None:
    """The variant that worker `pid` is training, once its run saved a checkpoint (mid-trial)."""
    for t in trials_of(url, study):
        if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(f":{pid}"):
            name = t.user_attrs["variant"]
            if (folder / name / "checkpoint.pt").exists() and not (folder / name / "results.json").exists():
                return name
    return None


def test_a_worker_killed_with_sigkill_leaves_a_trial_that_another_retries_and_resumes(postgres, tiny_binary, tmp_path):
    epochs = 30  # long enough a trial that the test sees one running before the worker finishes them all
    spec = spec_file(tmp_path, "[grid]\nseed = [0, 1, 2, 3]\n", "killed", epochs=epochs)
    url, folder = postgres.url(), tmp_path / "killed"
    victim = worker(spec, url, tiny_binary, folder)
    deadline, name = time.monotonic() + 300, None
    while name is None and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        name = _running_trial_of(url, "killed", victim.pid, folder) if os.path.exists(folder) else None
    assert name is not None, victim.communicate()[0]
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    survivor = worker(spec, url, tiny_binary, folder)
    output = survivor.communicate(timeout=600)[0]
    assert survivor.returncode == 0, output
    trials = trials_of(url, "killed")
    done = sorted(t.user_attrs["variant"] for t in trials if t.state.name == "COMPLETE")
    assert done == ["seed=0", "seed=1", "seed=2", "seed=3"]  # nothing lost, nothing doubled
    assert [t.user_attrs["variant"] for t in trials if t.state.name == "FAIL"] == [name]  # the killed one, failed by its heartbeat
    retry = next(t for t in trials if t.state.name == "COMPLETE" and t.user_attrs["variant"] == name)
    assert retry.system_attrs.get("failed_trial") is not None
    assert f"resuming {folder / name}" in output
    assert len((folder / name / "metrics.jsonl").read_text().splitlines()) == epochs  # no epoch lost or trained twice


def test_tpe_with_two_workers_makes_exactly_its_budget(postgres, tiny_binary, tmp_path):
    space = (
        '[search]\nmethod = "tpe"\ntrials = 8\nseed = 3\n[search.space]\n'
        'lr = { log_uniform = [0.001, 0.1] }\n"model_options.fc_dropout" = { uniform = [0.2, 0.6] }\n'
    )
    spec = spec_file(tmp_path, space, "tpe8")
    run = worker(spec, postgres.url(), tiny_binary, tmp_path / "tpe8", "--workers", "2")
    output = run.communicate(timeout=600)[0]
    assert run.returncode == 0, output
    trials = trials_of(postgres.url(), "tpe8")
    assert len(trials) == 8 and all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(t.user_attrs["variant"] for t in trials) == [f"trial-00{i}" for i in range(8)]
    assert len({t.user_attrs["worker"] for t in trials}) == 2 and len({json.dumps(t.params, sort_keys=True) for t in trials}) == 8


def test_optuna_dashboard_serves_the_study(postgres, tmp_path):
    spec = load_spec(spec_file(tmp_path, "[grid]\nseed = [0, 1]\n", "watched"))
    where = storage_for(postgres.url(), tmp_path)
    open_study(open_storage(where), where, spec)
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    if not dashboard.exists():
        pytest.skip(f"optuna-dashboard is not installed next to {sys.executable}")
    port = postgres_server.free_port()
    proc = subprocess.Popen(
        [str(dashboard), postgres.url(), "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        studies, deadline = None, time.monotonic() + 60
        while studies is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    studies = json.loads(answer.read())
            except OSError:
                time.sleep(0.2)
        assert studies is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        assert "watched" in [s["study_name"] for s in studies["study_summaries"]]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_database_that_dies_mid_sweep_is_one_line_and_the_sweep_continues_once_it_is_back(tiny_binary, tmp_path):
    """Its own server (the session's stays up for the other tests): stopped while a trial trains."""
    server, why = postgres_server.start()
    if server is None:
        pytest.skip(why)
    try:
        spec = spec_file(tmp_path, "[grid]\nseed = [0, 1]\n", "dies", epochs=3)
        first = worker(spec, server.url(), tiny_binary, tmp_path / "dies")
        deadline = time.monotonic() + 300
        while not (tmp_path / "dies" / "seed=0" / "checkpoint.pt").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        postgres_server.pause(server)
        output = first.communicate(timeout=300)[0]
        assert first.returncode == 1, output
        last = output.strip().splitlines()[-1]
        assert last.startswith(f"cifarlab sweep: error: postgresql+psycopg://{postgres_server.USER}:***@127.0.0.1:{server.port}/")
        assert "lost the study's database" in last and postgres_server.PASSWORD not in output
        postgres_server.resume(server)
        again = worker(spec, server.url(), tiny_binary, tmp_path / "dies")
        output = again.communicate(timeout=600)[0]
        assert again.returncode == 0, output
        trials = trials_of(server.url(), "dies")
        assert sorted(t.user_attrs["variant"] for t in trials if t.state.name == "COMPLETE") == ["seed=0", "seed=1"]
    finally:
        postgres_server.stop(server)
