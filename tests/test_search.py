"""`[search]` in a sweep spec: random trials fixed by the seed, Optuna's TPE study continued across
runs and kills, the checks of the space, and the one-line error without Optuna."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cifarlab.cli import main
from cifarlab.experiments.sweep import load_spec, run_sweep

HEAD = """
base = "paper"
train_subset = 40
[fixed]
epochs = 1
batch_size = 20
val_size = 20
"model_options.fc_widths" = [16, 16]
"""
SPACE = """
[search.space]
lr = { log_uniform = [0.001, 0.1] }
"model_options.fc_dropout" = { uniform = [0.2, 0.6] }
"model_options.widths" = { choice = [[8, 8, 8, 8, 16, 16, 16], [8, 8, 8, 8, 8, 8, 8]] }
batch_size = { int_log = [8, 32] }
"""
WIDTHS = [[8, 8, 8, 8, 16, 16, 16], [8, 8, 8, 8, 8, 8, 8]]


def search_spec(folder: Path, method: str, trials: int, seed: int = 0, head: str = HEAD, space: str = SPACE, name: str = "search.toml") -> Path:
    path = folder / name
    path.write_text(f'{head}[search]\nmethod = "{method}"\ntrials = {trials}\nseed = {seed}\n{space}')
    return path


def values(spec) -> list[dict]:
    return [v.overrides for v in spec.variants]


def trained(folder: Path, names: list[str]) -> dict[str, tuple[int, bytes]]:
    """Each run's results.json as (mtime, bytes): equal before and after means not trained again."""
    return {n: ((folder / n / "results.json").stat().st_mtime_ns, (folder / n / "results.json").read_bytes()) for n in names}


# ---------------------------------------------------------------- random


def test_random_trials_are_fixed_by_seed_and_index_and_stay_in_bounds(tmp_path):
    spec = load_spec(search_spec(tmp_path, "random", 5))
    assert [v.name for v in spec.variants] == [f"trial-00{i}" for i in range(5)]
    assert values(load_spec(search_spec(tmp_path, "random", 5))) == values(spec)  # a rerun makes the same trials
    assert values(load_spec(search_spec(tmp_path, "random", 8)))[:5] == values(spec)  # a larger budget adds to them
    assert values(load_spec(search_spec(tmp_path, "random", 5, seed=1))) != values(spec)
    for v in spec.variants:
        o = v.overrides
        assert 0.001 <= o["lr"] <= 0.1 and 0.2 <= o["model_options.fc_dropout"] <= 0.6
        assert o["model_options.widths"] in WIDTHS and isinstance(o["batch_size"], int) and 8 <= o["batch_size"] <= 32
        assert (v.config.lr, v.config.batch_size, v.config.model_options["widths"]) == (o["lr"], o["batch_size"], o["model_options.widths"])


def test_model_options_may_be_a_table_of_their_own(tmp_path):
    space = "[search.space.model_options]\nfc_dropout = { uniform = [0.2, 0.6] }\nslope = { choice = [0.01, 0.1] }\n"
    spec = load_spec(search_spec(tmp_path, "random", 2, space=space))
    assert [axis.key for axis in spec.search.axes] == ["model_options.fc_dropout", "model_options.slope"]
    assert spec.variants[0].config.model_options["slope"] in (0.01, 0.1)


def test_random_draws_spread_as_their_distributions(tmp_path):
    space = '[search.space]\nlr = { log_uniform = [0.0001, 0.1] }\nseed = { int = [0, 3] }\n"model_options.fc_dropout" = { uniform = [0.2, 0.6] }\n'
    trials = values(load_spec(search_spec(tmp_path, "random", 600, space=space)))
    # log-uniform: each decade holds a third (uniform would put 90% in the top one)
    decades = [sum(lo <= t["lr"] < lo * 10 for t in trials) / len(trials) for lo in (0.0001, 0.001, 0.01)]
    assert all(0.25 < share < 0.42 for share in decades), decades
    assert {t["seed"] for t in trials} == {0, 1, 2, 3}  # both bounds reached
    dropout = [t["model_options.fc_dropout"] for t in trials]
    assert 0.35 < sum(d < 0.4 for d in dropout) / len(dropout) < 0.65
    assert len({t["lr"] for t in trials}) == len(trials)


def test_random_sweep_ranks_and_a_rerun_after_a_kill_keeps_finished_trials(tiny_binary, tmp_path, capsys):
    path = search_spec(tmp_path, "random", 3)
    spec = load_spec(path)
    out = tmp_path / "search"

    def kill_after_first(line: str) -> None:
        if line == "trial trial-000: finished":
            raise KeyboardInterrupt  # as a kill right after the first trial

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, None, tiny_binary, "cpu", progress=False, log=kill_after_first)
    first = trained(out, ["trial-000"])
    assert not (out / "trial-001").exists()
    held = study_trials(out)
    assert held["trial-000"].user_attrs["overrides"] == spec.variants[0].overrides and held["trial-000"].state.name == "COMPLETE"

    assert main(["sweep", str(path), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[1].split()[:2] == ["trial-000", "finished"] and listed[2].split()[:2] == ["trial-001", "pending"]
    assert listed[-1] == "1 finished, 2 to run"

    again = load_spec(path)  # the rerun draws the same values
    assert values(again) == values(spec)
    lines: list[str] = []
    rows = run_sweep(again, None, tiny_binary, "cpu", progress=False, log=lines.append)
    assert "3 trials in" in lines[0] and "1 finished already, 2 to run" in lines[0]
    assert trained(out, ["trial-000"]) == first  # not trained again
    assert [r["rank"] for r in rows] == [1, 2, 3] and {r["name"] for r in rows} == {"trial-000", "trial-001", "trial-002"}
    vals = [r["val_accuracy"] for r in rows]
    assert vals == sorted(vals, reverse=True) and all(r["test_accuracy"] is not None for r in rows)
    for r in rows:
        assert r["overrides"] == spec.variants[int(r["name"][-3:])].overrides
        assert json.loads((out / r["name"] / "config.json").read_text())["train"]["lr"] == r["overrides"]["lr"]


# ---------------------------------------------------------------- tpe


def study_trials(folder: Path, name: str = "search") -> dict:
    """The study's trial that counts for each variant (a retry follows the trial it retries)."""
    import optuna

    from cifarlab.experiments.study import latest_trials

    return latest_trials(optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}").get_trials())


def test_tpe_study_resumes_an_interrupted_trial_then_continues_with_a_larger_budget(tiny_binary, tmp_path, capsys):
    head = HEAD.replace("epochs = 1", "epochs = 2")
    out = tmp_path / "search"
    spec = load_spec(search_spec(tmp_path, "tpe", 3, head=head))
    assert spec.variants == ()  # the study draws them as it goes
    seen = []

    def kill_in_second(line: str) -> None:
        seen.append(line)
        if any(s.startswith("[2/3] trial-001") for s in seen) and line.startswith("epoch 1/2"):
            raise KeyboardInterrupt  # Ctrl-C once trial-001 saved its first epoch

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, None, tiny_binary, "cpu", progress=False, log=kill_in_second)
    before = study_trials(out)
    assert [before[n].state.name for n in ("trial-000", "trial-001", "trial-002")] == ["COMPLETE", "WAITING", "WAITING"]
    assert before["trial-001"].params  # the retry keeps the values drawn for it
    assert (out / "trial-001" / "checkpoint.pt").exists() and not (out / "trial-001" / "results.json").exists()
    first = trained(out, ["trial-000"])

    lines: list[str] = []
    rows = run_sweep(load_spec(search_spec(tmp_path, "tpe", 3, head=head)), None, tiny_binary, "cpu", progress=False, log=lines.append)
    assert "1 finished already, 2 to run (0 newly queued)" in lines[0]
    assert any(line.startswith(f"resuming {out / 'trial-001'}") for line in lines)
    assert len((out / "trial-001" / "metrics.jsonl").read_text().splitlines()) == 2
    assert trained(out, ["trial-000"]) == first
    middle = study_trials(out)
    assert [t.state.name for t in middle.values()] == ["COMPLETE"] * 3
    assert [middle[n].params for n in ("trial-000", "trial-001")] == [before[n].params for n in ("trial-000", "trial-001")]
    assert [r["rank"] for r in rows] == [1, 2, 3]

    capsys.readouterr()
    path = search_spec(tmp_path, "tpe", 5, head=head)  # a larger budget: two more trials
    assert main(["sweep", str(path), "--data-dir", str(tiny_binary), "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "3 finished already, 2 to run (2 newly queued)" in printed and "[1/5]" not in printed and "[4/5] trial-003" in printed
    after = study_trials(out)
    assert [t.state.name for t in after.values()] == ["COMPLETE"] * 5
    assert [after[f"trial-00{i}"].params for i in range(3)] == [middle[f"trial-00{i}"].params for i in range(3)]
    assert trained(out, ["trial-000"]) == first
    # the sampler is reseeded by the trials made so far: a fresh TPESampler(seed) would replay the first draws
    assert after["trial-003"].params != after["trial-000"].params and after["trial-004"].params != after["trial-001"].params
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(r["name"] for r in board) == [f"trial-00{i}" for i in range(5)] and [r["rank"] for r in board] == [1, 2, 3, 4, 5]
    assert {r["name"]: r["val_accuracy"] for r in board} == {n: t.value for n, t in after.items()}
    assert board[0]["overrides"]["model_options.widths"] in WIDTHS

    assert main(["sweep", str(path), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith(f"5 trials of a tpe search over the paper preset in {out}; study 'search'") and listed[-1] == "5 finished, 0 to run"
    assert all(line.split()[1] == "finished" for line in listed[1:-1])

    # the study is continued only by a spec that agrees with it
    search_spec(tmp_path, "tpe", 6, head=head.replace("epochs = 2", "epochs = 3"))
    assert main(["sweep", str(path), "--data-dir", str(tiny_binary), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{out / 'optuna.db'}: study 'search' was made with epochs=2, the spec now says 3" in err
    assert len(study_trials(out)) == 5


def test_a_failing_tpe_trial_is_told_to_the_study_and_recorded(tiny_binary, tmp_path):
    space = "[search.space]\nlr = { log_uniform = [1e5, 1e6] }\n"  # diverges
    head = HEAD.replace("epochs = 1", "epochs = 2\nstop_patience = 0")
    rows = run_sweep(load_spec(search_spec(tmp_path, "tpe", 1, head=head, space=space)), None, tiny_binary, "cpu", progress=False, log=lambda s: None)
    held = study_trials(tmp_path / "search")
    assert [t.state.name for t in held.values()] == ["FAIL"] and "TrainingDiverged" in held["trial-000"].user_attrs["result"]["reason"]
    assert rows[0]["status"] == "failed" and "TrainingDiverged" in rows[0]["reason"] and rows[0]["rank"] is None


def test_running_or_listing_a_sweep_needs_optuna_and_says_so(tmp_path, capsys, monkeypatch):
    path = search_spec(tmp_path, "tpe", 3)
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    assert main(["sweep", str(path), "--list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "cifarlab sweep: error: sweeps keep their trials in an Optuna study: pip install 'cifarlab[search]'"
    assert not (tmp_path / "search").exists()
    assert len(load_spec(search_spec(tmp_path, "random", 3)).variants) == 3  # reading a spec needs no Optuna


# ---------------------------------------------------------------- checking the spec

OK_HEAD = 'base = "paper"\n'


@pytest.mark.parametrize(
    "search, names",
    [
        ('method = "random"\ntrials = 2\n[search.space]\nlr = 0.1\n', ["[search.space] lr: expected one of", "a fixed value goes in [fixed]"]),
        ('method = "random"\ntrials = 2\n[search.space]\nlr = { normal = [0, 1] }\n', ["[search.space] lr: expected one of"]),
        ('method = "random"\ntrials = 2\n[search.space]\nlr = { log_uniform = [0, 0.1] }\n', ["lr: log_uniform needs low > 0"]),
        ('method = "random"\ntrials = 2\n[search.space]\nlr = { uniform = [0.1, 0.01] }\n', ["lr: uniform needs low < high"]),
        ('method = "random"\ntrials = 2\n[search.space]\nlr = { uniform = [0.1] }\n', ["lr: uniform must be [low, high], two numbers"]),
        ('method = "random"\ntrials = 2\n[search.space]\nbatch_size = { int = [16, 64.5] }\n', ["batch_size: int bounds must be integers"]),
        (
            'method = "random"\ntrials = 2\n[search.space]\nbatch_size = { uniform = [16, 64] }\n',
            ["[search.space] batch_size = 16.0", "field 'batch_size' must be int"],
        ),
        (
            'method = "random"\ntrials = 2\n[search.space]\n"model_options.fc_dropout" = { uniform = [0.2, 1.5] }\n',
            ["[search.space] model_options.fc_dropout = 1.5", "fc_dropout"],
        ),
        (
            'method = "random"\ntrials = 2\n[search.space]\n"model_options.widths" = { choice = [[8, 8, 8, 8, 16, 16, 16], [8, 8]] }\n',
            ["[search.space] model_options.widths = [8, 8]", "widths must be a list of 7"],
        ),
        # each alone is fine; together they are the paper net's 7 widths for the fast net
        (
            'method = "random"\ntrials = 2\n[search.space]\nmodel = { choice = ["paper", "fast"] }\n'
            '"model_options.widths" = { choice = [[8, 8, 8, 8, 16, 16, 16]] }\n',
            ["[search.space] model=fast,widths=8-8-8-8-16-16-16", "widths must be a list of 3"],
        ),
        ('method = "random"\ntrials = 2\n[search.space]\n"model_options.widths" = { choice = [[8, 8], [8, 8]] }\n', ["choice lists [8, 8] twice"]),
        ('method = "random"\ntrials = 2\n[search.space]\nlr = { choice = [] }\n', ["lr: choice must be a non-empty list"]),
        ('method = "random"\ntrials = 2\n[search.space]\nlrr = { uniform = [0.1, 0.2] }\n', ["[search.space] lrr = 0.1", "unknown field 'lrr'"]),
        ('method = "random"\ntrials = 2\n[search.space]\nval_size = { int = [0, 100] }\n', ["val_size = 0", "no validation images"]),
        ('method = "grid"\ntrials = 2\n[search.space]\nlr = { uniform = [0.1, 0.2] }\n', ["[search] method must be 'random' or 'tpe'"]),
        ('method = "random"\ntrials = 0\n[search.space]\nlr = { uniform = [0.1, 0.2] }\n', ["[search] trials must be an integer of at least 1"]),
        ('method = "random"\ntrials = 2000\n[search.space]\nlr = { uniform = [0.1, 0.2] }\n', ["trials = 2,000 is more than 1,000; pass --yes"]),
        ('method = "random"\ntrials = 2\nstudy = ""\n[search.space]\nlr = { uniform = [0.1, 0.2] }\n', ["[search] study must be a name"]),
        ('method = "random"\ntrials = 2\nbudget = 3\n[search.space]\nlr = { uniform = [0.1, 0.2] }\n', ["[search] unknown key 'budget'"]),
        ('method = "random"\ntrials = 2\n', ["[search] needs a [search.space] table"]),
        ('method = "tpe"\ntrials = 2\nbudget_seconds = -1\n[search.space]\nlr = { uniform = [0.1, 0.2] }\n', ["[search] budget_seconds", "-1"]),
    ],
)
def test_bad_search_tables_are_one_line_errors_naming_spec_and_field(tmp_path, capsys, search, names):
    path = tmp_path / "spec.toml"
    path.write_text(f"{OK_HEAD}[search]\n{search}")
    assert main(["sweep", str(path), "--list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"cifarlab sweep: error: {path}"), err
    for name in names:
        assert name in err, err
    assert not (tmp_path / "spec").exists()


@pytest.mark.parametrize(
    "text, name",
    [
        (
            f'{OK_HEAD}[grid]\nlr = [0.1]\n[search]\nmethod = "random"\ntrials = 2\n[search.space]\nseed = {{ int = [0, 9] }}\n',
            "a [search] makes its own trials",
        ),
        (
            f'{OK_HEAD}[fixed]\nval_size = 0\n[search]\nmethod = "random"\ntrials = 2\n[search.space]\nseed = {{ int = [0, 9] }}\n',
            "[fixed]: val_size = 0 leaves no validation",
        ),
    ],
)
def test_a_search_spec_is_checked_as_a_whole(tmp_path, capsys, text, name):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    assert main(["sweep", str(path), "--list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and name in err, err


def test_the_example_search_spec_loads():
    example = Path(__file__).resolve().parents[1] / "examples" / "paper_search.toml"
    spec = load_spec(example)
    assert spec.search.method == "tpe" and spec.search.trials >= 20 and spec.train_subset
    keys = {axis.key.rpartition(".")[2] for axis in spec.search.axes}
    assert {"conv_dropout", "dropout2d", "fc_dropout", "widths", "pool2", "extra_dropout", "extra_dropout_after"} <= keys


def test_a_trial_over_the_time_budget_is_scored_down_and_ranked_below_the_rest(tiny_binary, tmp_path):
    from cifarlab.experiments.leaderboard import format_leaderboard, rank
    from cifarlab.experiments.space import parse_search

    search = parse_search({"method": "tpe", "trials": 1, "budget_seconds": 100, "space": {"lr": {"uniform": [0.1, 0.2]}}}, "s")
    assert search.score(0.9, 100.0) == 0.9 and search.score(0.9, 110.0) == pytest.approx(0.8)  # a point per 1% over
    row = dict(status="finished", reason=None, name="", overrides={}, test_accuracy=None, params=None, epochs=1, train_seconds=1.0)
    rows = rank([{**row, "name": "late", "val_accuracy": 0.9, "over_budget": True}, {**row, "name": "in", "val_accuracy": 0.5}])
    assert [(r["name"], r["rank"]) for r in rows] == [("in", 1), ("late", 2)]
    assert "finished, over the time budget" in format_leaderboard(rows)

    spec = search_spec(tmp_path, "tpe", 1, space="budget_seconds = 1e-9\n[search.space]\nlr = { uniform = [0.01, 0.02] }\n")
    rows = run_sweep(load_spec(spec), None, tiny_binary, "cpu", progress=False, log=lambda s: None)
    trial = study_trials(tmp_path / "search")["trial-000"]
    assert rows[0]["over_budget"] and trial.user_attrs["result"]["over_budget"]
    assert trial.value == pytest.approx(rows[0]["val_accuracy"] - (rows[0]["train_seconds"] / 1e-9 - 1))
