"""Sweeps as Optuna studies, on the default SQLite storage: train's own override rules, names checked
up front, the folder lock, damaged or foreign studies and bad storage URLs as one-line errors, a
SIGKILLed sweep resumed, and the leaderboard rebuilt from the study alone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifarlab.cli import main
from cifarlab.experiments.leaderboard import rows_from_folders
from cifarlab.experiments.spec import load_spec
from cifarlab.experiments.study import (
    enqueue,
    latest_trials,
    open_storage,
    open_study,
    storage_for,
)
from cifarlab.experiments.sweep import folder_lock
from cifarlab.training.config import apply_overrides
from cifarlab.training.presets import get_preset

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAD = """
base = "paper"
train_subset = 40
[fixed]
epochs = 1
batch_size = 40
val_size = 20
"model_options.widths" = [8, 8, 8, 8, 16, 16, 16]
"model_options.fc_widths" = [16, 16]
"""


def write_spec(folder: Path, text: str, name: str = "spec.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("cifarlab sweep: error: "), err
    return err


def held_trials(folder: Path, study: str = "spec") -> dict:
    import optuna

    return latest_trials(optuna.load_study(study_name=study, storage=f"sqlite:///{folder / 'optuna.db'}").get_trials())


# ---------------------------------------------------------------- the spec


def test_grid_values_go_through_train_s_own_override_rules(tmp_path):
    """Both were refused: epochs 4 on fast kept fast's 6 low-resolution epochs; resnet18 got quick's widths."""
    fast = load_spec(write_spec(tmp_path, 'base = "fast"\n[grid]\nepochs = [4, 12]\n', "fast.toml"))
    for variant in fast.variants:
        assert variant.config == apply_overrides(get_preset("fast"), variant.overrides)  # as `train --preset fast --epochs N`
    assert [(v.config.low_res_epochs, v.config.mid_res_epochs) for v in fast.variants] == [(0, 1), (8, 1)]
    quick = load_spec(write_spec(tmp_path, 'base = "quick"\n[grid]\nmodel = ["fast", "resnet18"]\n', "quick.toml"))
    for variant in quick.variants:
        assert variant.config == apply_overrides(get_preset("quick"), variant.overrides)
    assert quick.variants[1].config.model == "resnet18" and quick.variants[1].config.model_options != get_preset("quick").model_options


@pytest.mark.parametrize(
    "name, problem",
    [
        ("x" * 300, "name of 300 bytes is longer than 200"),
        ("a\u0000b", "control character '\\x00'"),
        ("two\nlines", "control character '\\n'"),
        (".hidden", "not starting with '.'"),
        ("a/b", "no '/'"),
    ],
)
def test_variant_names_that_cannot_name_a_folder_are_refused_up_front(tmp_path, capsys, name, problem):
    spec = write_spec(tmp_path, HEAD + f"[[variants]]\nname = {json.dumps(name)}\nlr = 0.1\n")
    err = one_line_error(capsys, ["sweep", str(spec), "--list"])
    assert f"{spec} [[variants]] #1: " in err and problem in err, err
    assert not (tmp_path / "spec").exists()


def test_a_made_name_too_long_for_a_folder_is_cut_and_keeps_a_hash():
    from cifarlab.experiments.spec import variant_name

    long = [{"lr": 0.1, "model_options.widths": list(range(1000, 1100 + n))} for n in range(3)]
    names = [variant_name(o, list(o)) for o in long]
    assert all(len(n.encode()) <= 200 and n.startswith("lr=0.1,widths=1000-1001-") and "~" in n for n in names)
    assert len(set(names)) == 3 and names == [variant_name(o, list(o)) for o in long]  # distinct, and stable across runs
    assert variant_name({"name": "a\x00b"}, ["name"]) == "name=a_b"  # a made name never holds a control character


# ---------------------------------------------------------------- storage and study errors


def test_a_second_sweep_on_a_busy_folder_is_refused_before_it_trains(tmp_path, capsys):
    """Two random searches started at once into one folder both ran trial-000 (one recorded it failed
    while its folder held a finished run): the folder's lock now turns the second away."""
    spec = write_spec(tmp_path, HEAD + '[search]\nmethod = "random"\ntrials = 2\n[search.space]\nlr = { log_uniform = [0.001, 0.1] }\n')
    (tmp_path / "spec").mkdir()
    with folder_lock(tmp_path / "spec", exclusive=True):  # as a sweep running there
        err = one_line_error(capsys, ["sweep", str(spec), "--device", "cpu"])
    assert f"{tmp_path / 'spec'}: another `cifarlab sweep` is running in this folder" in err
    assert sorted(os.listdir(tmp_path / "spec")) == [".sweep.lock"]  # no study, no trial


@pytest.mark.parametrize("damage", ["overwritten", "cut in half"])
def test_a_damaged_study_file_is_a_one_line_error(tmp_path, capsys, damage):
    spec_path = write_spec(tmp_path, HEAD + "[grid]\nseed = [0, 1]\n")
    spec, folder = load_spec(spec_path), tmp_path / "spec"
    folder.mkdir()
    where = storage_for(None, folder)
    open_study(open_storage(where), where, spec)
    db = folder / "optuna.db"
    data = db.read_bytes()
    db.write_bytes(b"not a database, " * 64 if damage == "overwritten" else data[: len(data) // 2])
    for argv in (["sweep", str(spec_path), "--device", "cpu"], ["sweep", str(spec_path), "--list"]):
        err = one_line_error(capsys, argv)
        assert str(db) in err and "move the file away" in err, err
    assert not (folder / "seed=0").exists()


@pytest.mark.parametrize(
    "url, problem",
    [
        ("nonsense", "not a database URL"),
        ("nosuchdb://user:s3cret@localhost/db", "no database driver for it"),
        ("postgresql+psycopg://user:s3cret@127.0.0.1:1/db", "cannot open the study's database"),
        ("mysql://user:s3cret@127.0.0.1:1/db", "its driver is not installed"),
    ],
)
def test_bad_or_unreachable_storage_is_one_line_without_the_password(tmp_path, capsys, url, problem):
    spec = write_spec(tmp_path, HEAD + "[grid]\nseed = [0, 1]\n")
    for argv in (["sweep", str(spec), "--device", "cpu", "--storage", url], ["sweep", str(spec), "--list", "--storage", url]):
        err = one_line_error(capsys, argv)
        assert problem in err and "s3cret" not in err, err
    assert not (tmp_path / "spec").exists()


def test_a_sqlite_url_given_as_storage_is_a_database_like_any_other(tmp_path, capsys):
    spec = write_spec(tmp_path, HEAD + "[grid]\nseed = [0, 1]\n")
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert main(["sweep", str(spec), "--list", "--storage", url]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 finished, 2 to run"
    loaded = load_spec(spec)
    where = storage_for(url, tmp_path)
    open_study(open_storage(where), where, loaded)  # made, with the sqlite driver's own connection options
    assert (tmp_path / "elsewhere.db").exists()


def test_a_study_made_by_another_spec_is_refused(tmp_path, capsys):
    first = load_spec(write_spec(tmp_path, HEAD + "[grid]\nseed = [0, 1]\n", "a.toml"))
    where = storage_for(None, tmp_path / "out")
    (tmp_path / "out").mkdir()
    open_study(open_storage(where), where, first)
    other = write_spec(tmp_path, HEAD.replace("epochs = 1", "epochs = 2") + "[grid]\nseed = [0, 1]\n", "b.toml")
    (tmp_path / "b.toml").rename(tmp_path / "a2.toml")
    other = write_spec(tmp_path, (tmp_path / "a2.toml").read_text(), "a.toml")  # same study name, other settings
    err = one_line_error(capsys, ["sweep", str(other), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert f"{tmp_path / 'out' / 'optuna.db'}: study 'a' was made with epochs=1, the spec now says 2" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".sweep.lock", "optuna.db"]


def test_a_variant_given_other_settings_under_its_old_name_is_refused(tmp_path, capsys):
    """The spec's settings agree, but [[variants]] "x" changed: the study's trial of that name ran other values."""
    first = load_spec(write_spec(tmp_path, HEAD + '[[variants]]\nname = "x"\nlr = 0.1\n'))
    (tmp_path / "spec").mkdir()
    where = storage_for(None, tmp_path / "spec")
    rdb = open_storage(where)
    enqueue(rdb, where, open_study(rdb, where, first), first)
    changed = write_spec(tmp_path, HEAD + '[[variants]]\nname = "x"\nlr = 0.2\n')
    err = one_line_error(capsys, ["sweep", str(changed), "--device", "cpu"])
    assert "study 'spec' ran variant 'x' with {'lr': 0.1}, the spec now gives it other settings" in err


# ---------------------------------------------------------------- running


def test_the_leaderboard_rebuilt_from_the_study_equals_the_run_folders_and_escapes_names(tiny_binary, tmp_path, capsys):
    markup = "<b onclick=alert(1)>x<b>"
    spec_path = write_spec(tmp_path, HEAD + f"[grid]\nseed = [0, 1]\n[[variants]]\nname = {json.dumps(markup)}\nlr = 0.02\n")
    assert main(["sweep", str(spec_path), "--data-dir", str(tiny_binary), "--device", "cpu", "--quiet"]) == 0
    spec, folder = load_spec(spec_path), tmp_path / "spec"
    board = json.loads((folder / "leaderboard.json").read_text())
    names = [v.name for v in spec.variants]
    assert board == json.loads(json.dumps(rows_from_folders(spec, folder, names, {v.name: v.overrides for v in spec.variants})))
    assert {r["status"] for r in board} == {"finished"} and [r["rank"] for r in board] == [1, 2, 3]
    html = (folder / "leaderboard.html").read_text()
    assert markup not in html and "&lt;b onclick=alert(1)&gt;x&lt;b&gt;" in html
    # on a machine without the run folders: the study alone gives the same leaderboard
    shutil.move(folder, tmp_path / "elsewhere")
    (folder).mkdir()
    shutil.copy(tmp_path / "elsewhere" / "optuna.db", folder / "optuna.db")
    capsys.readouterr()
    assert main(["sweep", str(spec_path), "--leaderboard"]) == 0
    assert json.loads((folder / "leaderboard.json").read_text()) == board
    assert "<h2>Curves</h2>" in html and "<h2>Curves</h2>" not in (folder / "leaderboard.html").read_text()  # curves need the runs


def test_a_sweep_killed_with_sigkill_resumes_its_trial_and_counts_each_once(tiny_binary, tmp_path, capsys):
    spec_path = write_spec(tmp_path, HEAD.replace("epochs = 1", "epochs = 3") + "[grid]\nseed = [0, 1]\n")
    folder = tmp_path / "spec"
    env = {**os.environ, "PYTHONPATH": SRC}
    argv = [sys.executable, "-m", "cifarlab", "sweep", str(spec_path), "--data-dir", str(tiny_binary), "--device", "cpu", "--quiet"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = folder / "seed=0" / "checkpoint.pt"
    deadline = time.monotonic() + 120  # interpreter start and torch import on a loaded 2-core machine
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-trial: its first epoch saved, its last not
    proc.wait()
    assert checkpoint.exists() and not (folder / "seed=0" / "results.json").exists(), proc.stderr.read()
    assert held_trials(folder)["seed=0"].state.name == "RUNNING"
    assert main(argv[3:]) == 0
    out = capsys.readouterr().out
    assert f"resuming {folder / 'seed=0'}" in out and "0 finished already, 2 to run" in out
    import optuna

    trials = optuna.load_study(study_name="spec", storage=f"sqlite:///{folder / 'optuna.db'}").get_trials()
    finished = sorted(t.user_attrs["variant"] for t in trials if t.state.name == "COMPLETE")
    assert finished == ["seed=0", "seed=1"]  # each once
    assert [t.user_attrs["variant"] for t in trials if t.state.name == "FAIL"] == ["seed=0"]  # the killed one, retried
    assert len((folder / "seed=0" / "metrics.jsonl").read_text().splitlines()) == 3  # resumed: no epoch lost or doubled


def test_the_sweep_modules_import_each_other_without_a_cycle():
    """search.py and sweep.py imported each other; the split (spec, study, runner, leaderboard) runs one way."""
    import ast

    import cifarlab.experiments as experiments

    folder = Path(experiments.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cifarlab.experiments."):
                found.add(node.module.rsplit(".", 1)[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "cifarlab.experiments":
                found |= {alias.name for alias in node.names}
        graph[path.stem] = found

    def reaches(start: str, target: str, seen: set) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m, set())] == []
    assert {"spec", "study", "runner", "leaderboard", "sweep"} <= set(graph) and "search" not in graph
