"""`cifarlab sweep`: spec checking, restart after an interruption, failures recorded, local workers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cifarlab.cli import main
from cifarlab.experiments.sweep import LEADERBOARD, load_spec, run_sweep
from cifarlab.training.config import apply_overrides
from cifarlab.training.presets import get_preset
from conftest import open_page, write_binary


def study_trials(db: Path, name: str) -> dict:
    """The study's trial that counts for each variant, by name."""
    import optuna

    from cifarlab.experiments.study import latest_trials

    return latest_trials(optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials())


TINY = """
base = "paper"
train_subset = 40
[fixed]
epochs = 2
batch_size = 40
val_size = 20
"model_options.widths" = [8, 8, 8, 8, 16, 16, 16]
"model_options.fc_widths" = [16, 16]
[grid]
lr = [0.01, 0.03]
"model_options.fc_dropout" = [0.3, 0.5]
[[variants]]
name = "val-too-big"
val_size = 5000
"""
NAMES = ["lr=0.01,fc_dropout=0.3", "lr=0.01,fc_dropout=0.5", "lr=0.03,fc_dropout=0.3", "lr=0.03,fc_dropout=0.5"]


def write_spec(folder: Path, text: str, name: str = "spec.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, names",
    [
        ('base = "paper"\n[grid]\nlrr = [0.1]\n', ["[grid] lrr = 0.1", "unknown field 'lrr'"]),
        ('base = "paper"\n[fixed]\nlr = -1.0\n[grid]\nseed = [0, 1]\n', ["[fixed]", "bad value for lr: -1.0"]),
        ('base = "paper"\n[grid]\nepochs = ["two"]\n', ["field 'epochs' must be int"]),
        ('base = "paper"\n[grid]\n"model_options.fc_dropot" = [0.3]\n', ["model_options", "fc_dropot"]),
        ('base = "paper"\n[grid]\n"model_options.fc_dropout" = [0.3, 1.5]\n', ["model_options.fc_dropout = 1.5", "1.5"]),
        ('base = "paper"\n[grid]\n"optim.lr" = [0.3]\n', ["unknown field 'optim.lr'"]),
        ('base = "paper"\n[grid]\nlr = 0.1\n', ["lr must be a non-empty list"]),
        ('base = "papr"\n[grid]\nlr = [0.1]\n', ["base:", "unknown preset 'papr'"]),
        ('base = "paper"\ngird = {lr = [0.1]}\n', ["unknown key 'gird'"]),
        ('base = "paper"\ntrain_subset = 0\n[grid]\nlr = [0.1]\n', ["train_subset must be a positive integer"]),
        ('base = "paper"\n', ["nothing to sweep"]),
        ('base = "paper"\n[grid\n', ["not valid TOML"]),
        ('base = "paper"\n[[variants]]\nlr = 0.1\n[[variants]]\nlr = 0.1\n', ["two variants are named 'lr=0.1'"]),
        (
            'base = "fast"\n[grid]\n"model_options.widths" = [[64, -5, 256]]\n',
            ["model_options.widths = [64, -5, 256]", "widths must be a list of 3 integers from 1 to 4096"],
        ),
        ('base = "paper"\n[[variants]]\n"model_options.fc_dropout" = 1.0\n', ["[[variants]] #1", "fc_dropout must be a number from 0 up to"]),
        (  # would build on the meta device
            'base = "paper"\n[grid]\n"model_options.widths" = [[1000000000000, 1, 1, 1, 1, 1, 1]]\n',
            ["widths must be a list of 7 integers from 1 to 4096"],
        ),
        # each value alone is fine; together they are the paper net's 7 widths for the fast net
        (
            'base = "paper"\n[grid]\nmodel = ["paper", "fast"]\n"model_options.widths" = [[8, 8, 8, 8, 16, 16, 16]]\n',
            ["[grid] model=fast,widths=8-8-8-8-16-16-16", "widths must be a list of 3"],
        ),
    ],
)
def test_bad_specs_are_one_line_errors_naming_file_and_field(tmp_path, capsys, text, names):
    spec = write_spec(tmp_path, text)
    assert main(["sweep", str(spec), "--list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"cifarlab sweep: error: {spec}"), err
    for name in names:
        assert name in err, err
    assert not (tmp_path / "spec").exists()  # nothing ran


def test_spec_variants_and_names(tmp_path):
    spec = load_spec(write_spec(tmp_path, TINY))
    assert [v.name for v in spec.variants] == [*NAMES, "val-too-big"]
    config = spec.variants[1].config
    assert (config.lr, config.epochs, config.model_options["fc_dropout"], config.model_options["widths"]) == (0.01, 2, 0.5, [8, 8, 8, 8, 16, 16, 16])
    assert spec.variants[4].config.val_size == 5000 and spec.train_subset == 40


def test_sweep_interrupted_then_restarted_finishes_with_leaderboard(tiny_binary, tmp_path, browser, capsys):
    spec_path = write_spec(tmp_path, TINY)
    spec = load_spec(spec_path)
    out = tmp_path / "spec"
    current = []

    def interrupt_third(line: str) -> None:
        if line.startswith("[3/"):
            current.append(line)
        if current and line.startswith("epoch 1/2"):
            raise KeyboardInterrupt  # as Ctrl-C right after the third variant saved its first epoch

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, None, tiny_binary, "cpu", progress=False, log=interrupt_third)
    done = {n: (out / n / "results.json") for n in NAMES[:2]}
    stamps = {n: (p.stat().st_mtime_ns, p.read_bytes()) for n, p in done.items()}
    third = out / NAMES[2]
    assert not (third / "results.json").exists() and (third / "checkpoint.pt").exists()
    assert json.loads((third / "status.json").read_text())["status"] == "stopped"
    held = study_trials(out / "optuna.db", "spec")
    assert held[NAMES[2]].state.name == "WAITING"  # failed when interrupted, and queued again at once
    assert [held[n].state.name for n in NAMES[:2]] == ["COMPLETE", "COMPLETE"] and held[NAMES[3]].state.name == "WAITING"
    assert not (out / NAMES[3]).exists()

    lines: list[str] = []
    rows = run_sweep(spec, None, tiny_binary, "cpu", progress=False, log=lines.append)
    assert "2 finished already, 3 to run" in lines[0]
    assert any(line.startswith(f"resuming {third}") for line in lines)
    assert {n: (p.stat().st_mtime_ns, p.read_bytes()) for n, p in done.items()} == stamps  # skipped, untouched
    assert len((third / "metrics.jsonl").read_text().splitlines()) == 2
    finished = [r for r in rows if r["status"] == "finished"]
    assert sorted(r["name"] for r in finished) == NAMES and [r["rank"] for r in finished] == [1, 2, 3, 4]
    vals = [r["val_accuracy"] for r in finished]
    assert vals == sorted(vals, reverse=True) and all(r["test_accuracy"] is not None for r in finished)
    assert rows[-1]["name"] == "val-too-big" and rows[-1]["status"] == "failed" and "DataError" in rows[-1]["reason"]
    held = study_trials(out / "optuna.db", "spec")
    assert held["val-too-big"].state.name == "FAIL" and "DataError" in held["val-too-big"].user_attrs["result"]["reason"]
    assert sorted(t.state.name for t in held.values()) == ["COMPLETE"] * 4 + ["FAIL"]
    assert json.loads((out / "leaderboard.json").read_text()) == json.loads(json.dumps(rows))

    seen = open_page(browser, out / LEADERBOARD, tmp_path / "leaderboard.png")
    assert seen["errors"] == [] and len(seen["widths"]) == 2 and all(w > 0 for w in seen["widths"])
    assert "val-too-big" in seen["text"] and "DataError" in seen["text"]

    # changing the spec under finished runs is refused, naming the run's config and the field
    write_spec(tmp_path, TINY.replace("epochs = 2", "epochs = 3"))
    assert main(["sweep", str(spec_path), "--data-dir", str(tiny_binary), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{out / NAMES[0] / 'config.json'}" in err and "epochs=2" in err


def test_two_local_workers_share_the_study_and_a_rerun_skips_what_finished(tiny_binary, tmp_path, capsys):
    spec = write_spec(tmp_path, TINY.replace("epochs = 2", "epochs = 1").split("[grid]")[0] + "[grid]\nseed = [0, 1]\n", "par.toml")
    argv = ["sweep", str(spec), "--data-dir", str(tiny_binary), "--device", "cpu", "--workers", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 workers on this machine" in out
    for name in ("seed=0", "seed=1"):
        assert (tmp_path / "par" / name / "results.json").exists()
        status = json.loads((tmp_path / "par" / name / "status.json").read_text())
        assert status["status"] == "finished" and status["pid"] != os.getpid()  # trained in a worker process
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "2 finished already, 0 to run" in again and again.count("finished") >= 3 and (tmp_path / "par" / LEADERBOARD).exists()


def test_diverging_variant_fails_and_mathtext_names_do_not_break_the_figures(tiny_binary, tmp_path, capsys):
    """lr 1e6 diverges without a NaN training loss; `$...$` names are mathtext to matplotlib and used
    to fail the leaderboard and compare after all the training."""
    names = ["$x^$", "a$\\frac{1}{$b", "$\\alpha$"]
    listed = "".join(f"[[variants]]\nname = {json.dumps(n)}\nlr = {0.01 * (i + 1)}\n" for i, n in enumerate(names))
    text = TINY.split("[grid]")[0].replace("epochs = 2", "epochs = 1") + listed
    text += '[[variants]]\nname = "huge-lr"\nlr = 1e6\nval_size = 0\nepochs = 2\nstop_patience = 0\n'
    spec = write_spec(tmp_path, text)
    assert main(["sweep", str(spec), "--data-dir", str(tiny_binary), "--device", "cpu", "--quiet"]) == 0
    board = json.loads((tmp_path / "spec" / "leaderboard.json").read_text())
    assert [(r["name"], r["status"]) for r in board] == [*((n, "finished") for n in names), ("huge-lr", "failed")]
    assert "TrainingDiverged" in board[-1]["reason"] and "diverged" in board[-1]["reason"] and board[-1]["rank"] is None
    assert all((tmp_path / "spec" / f).stat().st_size > 0 for f in ("leaderboard-ranking.png", "leaderboard-curves.png"))
    capsys.readouterr()
    runs = [str(tmp_path / "spec" / n) for n in names]
    assert main(["compare", *runs, "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare-curves.png").stat().st_size > 0 and capsys.readouterr().err == ""


def test_mathtext_is_escaped_so_labels_draw_as_written():
    from matplotlib.cbook import is_math_text

    from cifarlab.experiments import pages

    for name in ("$x^$", "a$\\frac{1}{$b", "\\$5", "$$", "plain"):
        fig = pages.new_figure(3, 1)
        fig.text(0, 0, pages.plain(name))
        fig.canvas.draw()  # raises for unparsable mathtext
        # not math, and matplotlib's unescaping of plain text gives the name back
        assert not is_math_text(pages.plain(name)) and pages.plain(name).replace("\\$", "$") == name


def big_grid(folder: Path, *sizes: int, extra: str = "") -> Path:
    """A grid of lr x seed x batch_size values, of the given lengths (all valid)."""
    lists = [[round(0.001 * (i + 1), 6) for i in range(sizes[0])], list(range(sizes[1])), [16 * (i + 1) for i in range(sizes[2])]]
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in zip(("lr", "seed", "batch_size"), lists))
    return write_spec(folder, f'base = "paper"\n[grid]\n{body}{extra}', f"big{'x'.join(map(str, sizes))}.toml")


def test_a_grid_over_the_limit_is_refused_before_it_is_made(tmp_path, capsys, monkeypatch):
    import cifarlab.experiments.spec as spec_module

    made = []
    spec = big_grid(tmp_path, 100, 100, 100)
    apply = spec_module.apply_overrides
    with monkeypatch.context() as patch:
        patch.setattr(spec_module, "apply_overrides", lambda c, o, source="": made.append(o) or apply(c, o, source=source))
        assert main(["sweep", str(spec), "--list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"cifarlab sweep: error: {spec}: 1,000,000 variants (100 x 100 x 100) is more than 1,000; pass --yes to sweep them all"
    assert made == [{}]  # only [fixed]: no variant was made, counted instead of timed (a loaded machine varies)
    spec = big_grid(tmp_path, 10, 10, 10, extra='[[variants]]\nname = "one-more"\nlr = 0.5\n')
    assert main(["sweep", str(spec), "--list"]) == 1
    assert "1,001 variants (10 x 10 x 10 + 1 listed)" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--list", "--yes"]) == 0
    assert capsys.readouterr().out.startswith(f"1,001 variants of the paper preset in {tmp_path / spec.stem}; study 'big10x10x10' in sqlite:///")


def test_checking_a_large_grid_is_linear_and_per_spec(tmp_path, monkeypatch):
    """2,000 variants: each value checked alone once, each variant once through train's own override
    parser (apply_overrides), each distinct model built once; counted, not timed."""
    import cifarlab.experiments.spec as spec_module

    checked, built = [], []
    apply, build = spec_module.apply_overrides, spec_module.build_model
    monkeypatch.setattr(spec_module, "apply_overrides", lambda c, o, source="": checked.append(o) or apply(c, o, source=source))
    monkeypatch.setattr(spec_module, "build_model", lambda name, **o: built.append(o) or build(name, **o))
    spec = big_grid(tmp_path, 100, 10, 1, extra='"model_options.fc_dropout" = [0.3, 0.5]\n')
    loaded = load_spec(spec, max_variants=None)
    assert len(loaded.variants) == 2_000 and len({v.name for v in loaded.variants}) == 2_000
    assert len(checked) == 1 + 100 + 10 + 1 + 2 + 2_000  # [fixed], every value alone, then every variant
    assert len(built) == 1 + 2  # the base's model, then one per fc_dropout
    built.clear()
    small = write_spec(tmp_path, TINY)
    load_spec(small), load_spec(small)
    assert len(built) == 2 * 3  # [fixed], fc_dropout 0.3 and 0.5: again for the second spec, not cached per process


def test_grid_configs_are_those_of_the_override_parser(tmp_path):
    text = (
        'base = "paper"\n[fixed]\n"model_options.widths" = [8, 8, 8, 8, 16, 16, 16]\n[grid]\nlr = [0.01, 0.02]\n'
        "model_options = [{widths = [8, 8, 8, 8, 8, 8, 8], fc_widths = [8, 8]}, {slope = 0.2}]\n"
        '"model_options.fc_dropout" = [0.3, 0.5]\nflip = [true, false]\n'
    )
    spec = load_spec(write_spec(tmp_path, text))
    base = apply_overrides(get_preset("paper"), spec.fixed)
    assert len(spec.variants) == 16
    for v in spec.variants:
        assert v.config == apply_overrides(base, v.overrides), v.name


ONE = TINY.split("[grid]")[0].replace("train_subset = 40\n", "").replace("epochs = 2", "epochs = 1") + "[grid]\nseed = [0]\n"


def test_one_variant_is_singular(tmp_path, capsys):
    assert main(["sweep", str(write_spec(tmp_path, ONE)), "--list"]) == 0
    assert capsys.readouterr().out.startswith("1 variant of the paper preset in ")


def test_a_second_sweep_in_the_process_reads_its_own_data(tmp_path, capsys):
    """The data set was cached per process by folder: a second sweep saw the first one's images."""
    spec = write_spec(tmp_path, ONE)
    write_binary(tmp_path / "data", per_batch=20)
    argv = ["sweep", str(spec), "--data-dir", str(tmp_path / "data"), "--device", "cpu", "--quiet"]
    assert main(argv) == 0 and "sweep spec.toml: 1 variant in" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "data")
    write_binary(tmp_path / "data", per_batch=40)
    assert main([*argv, "--out", str(tmp_path / "second")]) == 0
    images = [json.loads((tmp_path / out / "seed=0" / "config.json").read_text())["train_images"] for out in ("spec", "second")]
    assert images == [5 * 20 - 20, 5 * 40 - 20]
