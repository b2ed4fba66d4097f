import json
import subprocess
import sys

import pytest

from cifarlab.cli import main


def test_help_lists_every_subcommand(capsys):
    commands = ("train", "evaluate", "info", "presets", "models", "report", "runs", "compare", "sweep", "predict", "export", "serve")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.split()}
    assert listed >= set(commands)
    for cmd in commands:  # and each has its own help
        with pytest.raises(SystemExit) as exit_:
            main([cmd, "--help"])
        assert exit_.value.code == 0 and f"usage: cifarlab {cmd}" in capsys.readouterr().out


def test_every_config_field_is_a_train_flag(capsys):
    import dataclasses

    from cifarlab.training.config import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    flags = set(capsys.readouterr().out.replace(",", " ").split())
    for field in dataclasses.fields(TrainConfig):
        if field.name not in ("preset", "model_options"):  # --preset picks the base; model options go through --set
            assert "--" + field.name.replace("_", "-") in flags, field.name


def parsed_config(argv):
    from cifarlab.cli import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_set_reaches_every_field_and_model_options():
    config = parsed_config(
        [
            "--preset",
            "paper",
            "--model",
            "paper",
            "--set",
            "model_options.widths=[32,32,64,64,128,128,128]",
            "--set",
            "schedule=linear",
            "--set",
            "lr=0.05",
            "--set",
            "nesterov=true",
            "--lr-end-factor",
            "0.1",
        ]
    )
    assert config.model_options["widths"] == [32, 32, 64, 64, 128, 128, 128]
    assert (config.schedule, config.lr, config.nesterov, config.lr_end_factor) == ("linear", 0.05, True, 0.1)
    assert parsed_config(["--preset", "paper", "--lr", "0.2", "--set", "lr=0.3"]).lr == 0.3  # --set is applied last
    assert parsed_config(["--optimizer", "adamw", "--stop-patience", "3"]).optimizer == "adamw"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "lrr=0.1"], "unknown field 'lrr'"),
        (["--set", "lr"], "expected FIELD=VALUE"),
        (["--set", "epochs=ten"], "field 'epochs' must be int"),
        (["--set", "model.widths=[1]"], "only model_options.NAME takes a dotted name"),
        (["--set", "epochs=[1,"], "is not a value"),
    ],
)
def test_set_errors_are_one_line_naming_the_field(argv, message, capsys, tmp_path):
    assert main(["train", *argv, "--out", str(tmp_path / "r"), "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_config_file_starts_from_a_run_or_toml(tiny_run, tmp_path):
    from_run = parsed_config(["--config", str(tiny_run / "config.json"), "--epochs", "5"])
    saved = json.loads((tiny_run / "config.json").read_text())["train"]
    assert from_run.epochs == 5 and from_run.model_options == saved["model_options"] and from_run.amp == "bf16"
    toml = tmp_path / "c.toml"
    toml.write_text('model = "paper"\nlr = 0.02\n[model_options]\nfc_dropout = 0.3\n')
    config = parsed_config(["--config", str(toml)])
    assert config.lr == 0.02 and config.model_options == {"fc_dropout": 0.3}
    toml.write_text("lr = [")
    from cifarlab.training.config import ConfigError

    with pytest.raises(ConfigError, match="not valid TOML"):
        parsed_config(["--config", str(toml)])


def test_evaluate_prints_table_and_writes_json(tiny_run, tmp_path, capsys):
    data = tiny_run.parent / "data"
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(tiny_run), "--data-dir", str(data), "--device", "cpu", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "airplane" in text and "confusion matrix" in text
    result = json.loads(out.read_text())
    assert set(result["per_class_accuracy"]) >= {"airplane", "truck"}
    assert len(result["confusion_matrix"]) == 10 and sum(map(sum, result["confusion_matrix"])) == 40
    assert result["test_error"] == pytest.approx(1 - result["test_accuracy"])


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no checkpoint there" in err
    assert main(["train", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--lr", "-1"]) == 1
    assert "bad value for lr" in capsys.readouterr().err


def test_info_reports_data_and_models(tiny_binary, capsys):
    assert main(["info", "--data-dir", str(tiny_binary)]) == 0
    out = capsys.readouterr().out
    assert "paper" in out and "1,780,650" in out and "ok, 100 training" in out


@pytest.mark.slow
def test_end_to_end_on_real_data_subset(real_data, tmp_path):
    """A real run through the installed command: train 1 epoch on 2,000 real images, then evaluate."""
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "cifarlab",
        "train",
        "--preset",
        "paper",
        "--epochs",
        "1",
        "--train-subset",
        "2000",
        "--val-size",
        "500",
        "--momentum",
        "0.9",
        "--data-dir",
        str(real_data),
        "--out",
        str(run),
        "--device",
        "cpu",
        "--quiet",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["test_accuracy"] > 0.15  # above chance (10%) after one short epoch
    done = subprocess.run(
        [sys.executable, "-m", "cifarlab", "evaluate", str(run), "--data-dir", str(real_data), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "test accuracy" in done.stdout


def test_presets_shows_resolved_settings(capsys):
    from cifarlab.training.presets import get_preset

    assert main(["presets", "paper", "airbench94"]) == 0
    out = capsys.readouterr().out
    assert "paper:" in out and "airbench94:" in out and "* stop_patience" in out and "'muon'" in out
    assert main(["presets", "--json"]) == 0
    presets = json.loads(capsys.readouterr().out)
    assert presets["fast"] == get_preset("fast").to_dict()
    assert main(["presets", "nope"]) == 1 and "unknown preset 'nope'" in capsys.readouterr().err
