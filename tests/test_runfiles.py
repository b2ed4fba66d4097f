"""One schema per run file: a valid file round-trips; a wrong type, a missing field and a wrong
shape are each a one-line RunError naming the file and the field; every reader refuses the same
config.json the same way."""

from __future__ import annotations

import json

import pytest

from cifarlab.cli import main
from cifarlab.common import runfiles
from cifarlab.common.files import RunError, read_json
from cifarlab.common.rundir import (
    CALIBRATION,
    CONFIG,
    EVALUATION,
    RESULTS,
    ROBUSTNESS,
    STATUS,
)
from cifarlab.common.runfiles import TEMPERATURE_RANGE

ROBUST = {
    "clean": {"accuracy": 0.9, "images": 100},
    "tta": 0,
    "corruptions": {"source": "generated", "mean_accuracy": 0.5, "images": 100, "accuracy": {"fog": [0.9, 0.8, 0.7, 0.6, 0.5]}},
    "cifar10_1": {"source": "CIFAR-10.1", "accuracy": 0.8, "images": 2000},
}
# file: (schema, a valid value, (broken value, the message's end) for a wrong type, a missing field, a wrong shape)
CASES = {
    CONFIG: (
        runfiles.RunConfig,
        {"train": {"preset": "quick", "epochs": 2}, "params": 10, "data": "/d"},
        [
            ({"train": {"epochs": "2"}}, "train.epochs should be an integer, found text"),
            ({"params": 3}, "lacks train"),
            ({"train": [1]}, "train should be an object, found a list"),
        ],
    ),
    STATUS: (
        runfiles.Status,
        {"status": "running", "pid": 3, "epoch": 1},
        [
            ({"status": ["running"]}, "status should be text, found a list"),
            ({"status": "running", "pid": True}, "pid should be an integer, found true/false"),
            ({"status": "x", "epoch": 1.5}, "epoch should be an integer, found a number"),
        ],
    ),
    RESULTS: (
        runfiles.Results,
        {"test_accuracy": 0.9, "epochs": 2, "per_class_accuracy": {"cat": 0.5}, "extra": [1]},
        [
            ({"test_accuracy": "abc"}, "test_accuracy should be a number, found text"),
            ({"per_class_accuracy": {"cat": "x"}}, "per_class_accuracy.cat should be a number, found text"),
            ({"per_class_accuracy": [0.5]}, "per_class_accuracy should be an object, found a list"),
        ],
    ),
    EVALUATION: (
        runfiles.Evaluation,
        {"test_accuracy": 0.9, "tta": 0, "confusion_matrix": [[1, 0], [0, 1]]},
        [
            ({"test_accuracy": None, "tta": "2"}, "tta should be an integer, found text"),
            ({"confusion_matrix": [[1, "a"]]}, "confusion_matrix.0.1 should be an integer, found text"),
            ({"classes": "cat"}, "classes should be a list, found text"),
        ],
    ),
    CALIBRATION: (
        runfiles.Calibration,
        {"temperature": 1.5, "epoch": 2, "fitted_on": "validation split"},
        [
            ({"temperature": "1"}, "temperature should be a number, found text"),
            ({"epoch": 2}, "lacks temperature"),
            ({"temperature": 1e-300}, "temperature should be between 0.05 and 20 (the range calibrate searches), found 1e-300"),
        ],
    ),
    ROBUSTNESS: (
        runfiles.Robustness,
        ROBUST,
        [
            ({**ROBUST, "clean": {"accuracy": "high", "images": 1}}, "clean.accuracy should be a number, found text"),
            ({**ROBUST, "clean": {"images": 1}}, "clean lacks accuracy"),
            (
                {**ROBUST, "corruptions": {**ROBUST["corruptions"], "accuracy": {"fog": [0.9]}}},
                "corruptions.accuracy.fog should be 5 accuracies (one per severity), found [0.9]",
            ),
        ],
    ),
    "export/config.json": (
        runfiles.ExportConfig,
        {"format": "cifarlab-safetensors", "format_version": 1, "weights": {"sha256": "ab", "dtype": "float32"}, "model": "paper"},
        [
            (
                {"format": "cifarlab-safetensors", "format_version": "1", "weights": {"sha256": "ab"}},
                "format_version should be an integer, found text",
            ),
            ({"format": "cifarlab-safetensors", "format_version": 1}, "lacks weights"),
            ({"format": "cifarlab-safetensors", "format_version": 1, "weights": ["ab"]}, "weights should be an object, found a list"),
        ],
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_each_run_file_round_trips_through_its_schema(name, tmp_path):
    schema, valid, _ = CASES[name]
    (tmp_path / name).parent.mkdir(exist_ok=True)
    runfiles.write(schema, tmp_path / name, valid)
    assert runfiles.read(schema, tmp_path / name) == valid == read_json(tmp_path / name)


@pytest.mark.parametrize("name", CASES)
def test_a_damaged_run_file_is_one_line_naming_the_file_and_the_field(name, tmp_path):
    schema, _, broken = CASES[name]
    (tmp_path / name).parent.mkdir(exist_ok=True)
    for value, message in broken:
        (tmp_path / name).write_text(json.dumps(value))
        with pytest.raises(RunError) as refused:
            runfiles.read(schema, tmp_path / name)
        assert str(refused.value) in (f"{tmp_path / name}: {message}", f"{tmp_path / name} {message}")
        with pytest.raises(RunError, match="should|lacks"):  # and the same value is never written
            runfiles.write(schema, tmp_path / "written.json", value)
        assert not (tmp_path / "written.json").exists()


def test_metrics_records_are_checked_line_by_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    record = {"epoch": 1, "lr": 0.1, "elapsed_seconds": 2.0, "val_accuracy": None}
    runfiles.append_metric(path, record)
    assert runfiles.read_metrics(path) == ([record], False)
    path.write_text(json.dumps(record) + '\n{"epoch": 2, "lr": "high", "elapsed_seconds": 3}\n')
    with pytest.raises(RunError, match=f"^{path}: line 2: lr should be a number, found text$"):
        runfiles.read_metrics(path)
    with pytest.raises(RunError, match="lacks elapsed_seconds"):
        runfiles.append_metric(path, {"epoch": 3, "lr": 0.1})


def test_the_temperature_bounds_are_the_fits_own():
    from cifarlab.common import metrics
    from cifarlab.inference import calibrate

    assert metrics.TEMPERATURE_RANGE is calibrate.TEMPERATURE_RANGE is TEMPERATURE_RANGE
    for temperature in TEMPERATURE_RANGE:  # the ends of the search are valid, just past them not
        runfiles.check(runfiles.Calibration, {"temperature": temperature}, "c")
    for temperature in (TEMPERATURE_RANGE[0] * 0.99, TEMPERATURE_RANGE[1] * 1.01, float("nan"), float("inf")):
        with pytest.raises(RunError, match="between"):
            runfiles.check(runfiles.Calibration, {"temperature": temperature}, "c")


@pytest.mark.parametrize("name", [CONFIG, RESULTS, CALIBRATION, ROBUSTNESS])
def test_deeply_nested_json_is_one_line(name, tmp_path):
    (tmp_path / name).write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(RunError, match=f"^{tmp_path / name}: not valid JSON \\(nested too deeply\\)$"):
        runfiles.read(CASES[name][0], tmp_path / name)


def tampered_run(tiny_run, tmp_path, **train):
    import shutil

    run = tmp_path / "tampered"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / CONFIG).read_text())
    config["train"].update(train)
    (run / CONFIG).write_text(json.dumps(config))
    return run


@pytest.mark.parametrize(
    "train, message",
    [
        ({"model": "resnet9000"}, "unknown model 'resnet9000'"),
        ({"colour": "blue"}, "unknown field 'colour'"),
        ({"epochs": "2"}, "train.epochs should be an integer, found text"),
    ],
)
def test_every_reader_refuses_a_tampered_config_the_same_way(tiny_run, tmp_path, capsys, train, message):
    run = tampered_run(tiny_run, tmp_path, **train)
    main(["runs", str(run)])  # lists what it can read, and says why it skips the rest
    errors = [capsys.readouterr().err.strip()]
    for command in (
        ["report", str(run), "--quiet"],
        ["compare", str(run), str(tiny_run), "--out", str(tmp_path / "c")],
        ["train", "--resume", str(run)],
        ["export", str(run), "--format", "safetensors", "--output", str(tmp_path / "e")],
    ):
        assert main(command) == 1, command
        errors.append(capsys.readouterr().err.strip())
    assert all(message in e and "\n" not in e for e in errors), errors
    assert not (tmp_path / "e").exists() and not (tmp_path / "c").exists()


def test_a_typo_gets_did_you_mean(tmp_path):
    from cifarlab.training.config import ConfigError, TrainConfig
    from cifarlab.training.presets import get_preset

    with pytest.raises(ConfigError, match=r"unknown field 'epoch' \(did you mean 'epochs'\?\)"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match=r"unknown preset 'qiuck' \(did you mean 'quick'\?\)"):
        get_preset("qiuck")
    with pytest.raises(ConfigError, match=r"unknown model 'resnet81' \(did you mean 'resnet18'\?\)"):
        TrainConfig.from_dict({"model": "resnet81"})
    with pytest.raises(ConfigError, match=r"bad value for schedule: 'cosin' .*\(did you mean 'cosine'\?\)"):
        TrainConfig.from_dict({"schedule": "cosin"})


def test_a_typod_preset_on_the_command_line_gets_did_you_mean(capsys, tmp_path):
    assert main(["train", "--preset", "qiuck", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown preset 'qiuck' (did you mean 'quick'?)" in err and not (tmp_path / "r").exists()
