"""The model zoo and its recipes: published parameter counts, one training step per family, an ONNX
export, the learning-rate schedules, and every recipe preset with every model."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from cifarlab.cli import build_parser, config_from_args, main
from cifarlab.models import ModelError, build_model, count_parameters, list_models
from cifarlab.models.measure import build_on_meta, forward_flops
from cifarlab.training.config import ConfigError
from cifarlab.training.optim import Schedule, build_optimizer, lr_factor
from cifarlab.training.presets import get_preset
from conftest import write_binary

# Published parameter counts: (figure, decimals in millions) where a paper gives millions, an exact
# integer where the reference implementation prints one.
PUBLISHED = {
    # He et al. 2016, Table 6 (CIFAR-10, option A shortcuts)
    "resnet20": (0.27, 2),
    "resnet32": (0.46, 2),
    "resnet44": (0.66, 2),
    "resnet56": (0.85, 2),
    "resnet110": (1.7, 1),
    # kuangliu/pytorch-cifar
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "preact_resnet18": 11_171_146,
    "vgg11": 9_231_114,
    "vgg13": 9_416_010,
    "vgg16": 14_728_266,
    "vgg19": 20_040_522,
    "mobilenetv2": 2_296_922,
    "simple_dla": 15_142_970,
    "dla": 16_291_386,
    # Zagoruyko and Komodakis 2016, Table 1 (36.5 M for WRN-28-10); exact counts of the reference code
    "wrn": 36_479_194,
    "wrn28_10": 36_479_194,
    "wrn16_4": 2_748_890,
}
ZOO = sorted(PUBLISHED)
# the smallest member of each family, for the one-step training test
FAMILIES = ["resnet20", "resnet18", "preact_resnet18", "vgg11", "wrn16_4", "simple_dla", "dla", "mobilenetv2"]
RECIPES = ["standard", "he2016", "onecycle"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine trains in the background
    yield
    torch.set_num_threads(threads)


def test_every_registered_model_is_in_the_zoo_or_the_projects_own():
    import cifarlab.models.registry as registry

    built_in = {name for name, builder in registry._BUILDERS.items() if builder.__module__.startswith("cifarlab.models.")}
    assert built_in == set(ZOO) | {"paper", "fast"}  # users' models (other tests register some) aside


@pytest.mark.parametrize("name", ZOO)
def test_parameter_count_matches_the_published_figure(name):
    count = count_parameters(build_on_meta(name))
    published = PUBLISHED[name]
    if isinstance(published, tuple):
        figure, decimals = published
        assert round(count / 1e6, decimals) == figure, f"{count:,}"
    else:
        assert count == published


def test_meta_and_real_models_agree_and_flops_are_torchs_count():
    real = build_model("resnet20")
    assert count_parameters(real) == count_parameters(build_on_meta("resnet20")) == 269_722
    assert forward_flops(real) == forward_flops(build_on_meta("resnet20"))
    assert real.training  # measuring leaves the mode as it was
    conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Flatten(), nn.Linear(16 * 32 * 32, 10))
    assert forward_flops(conv) == 2 * (3 * 9 * 16 * 32 * 32 + 16 * 32 * 32 * 10)  # 2 FLOPs per multiply-add


def test_options_and_bad_values():
    assert count_parameters(build_on_meta("wrn", depth=16, widen_factor=4)) == PUBLISHED["wrn16_4"]
    assert count_parameters(build_on_meta("resnet20", shortcut="B")) > count_parameters(build_on_meta("resnet20"))
    assert build_model("vgg11", num_classes=100).eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 100)
    for name, options, message in [
        ("wrn", {"depth": 27}, "depth must be 6n \\+ 4"),
        ("wrn", {"widen_factor": 0}, "widen_factor must be a whole number >= 1"),
        ("wrn16_4", {"dropout": 1.0}, "dropout must be in \\[0, 1\\)"),
        ("resnet20", {"shortcut": "C"}, "shortcut must be 'A'"),
        ("resnet18", {"depth": 20}, ".*unexpected keyword argument 'depth'"),
    ]:
        with pytest.raises(ModelError, match=f"bad options for model '{name}': {message}") as error:
            build_model(name, **options)
        assert "\n" not in str(error.value)


def one_image_batch_splits(n: int):
    from cifarlab.training.learner import Splits

    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n) % 10
    return Splits(images, labels, images[:0], labels[:0], images, labels, tuple("abcdefghij"), "fake")


@pytest.mark.parametrize("name", FAMILIES)
def test_one_training_step_on_the_cpu(name):
    """The training code's own step (augmentation, channels_last, bf16 autocast, the optimizer and
    schedule of the standard recipe) on 2 images: one step, finite loss, every weight moved."""
    from cifarlab.training.learner import build_learner, train_epoch

    config = get_preset("standard").replace(model=name, batch_size=2, epochs=1, val_size=0, amp="bf16")
    splits = one_image_batch_splits(2)
    learner = build_learner(config, splits, torch.device("cpu"), torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in learner.model.parameters()]
    record = train_epoch(learner, splits, config, progress=False)
    assert record["steps"] == 1 and math.isfinite(record["train_loss"])
    moved = [not torch.equal(b, p) for b, p in zip(before, learner.model.parameters())]
    assert all(moved), f"{moved.count(False)} of {len(moved)} parameters did not change"


def test_he2016_resnet20_exports_to_onnx(tmp_path, capsys):
    """A 1-epoch he2016 run (ResNet-20, zero-padded shortcuts, step schedule) through `cifarlab export`."""
    from cifarlab.training.train import train

    data = write_binary(tmp_path / "data", per_batch=8, test=16).parent
    config = get_preset("he2016").replace(epochs=1, batch_size=32, val_size=10)
    train(config, tmp_path / "run", data_dir=data, device="cpu", progress=False, log=lambda s: None)
    out = tmp_path / "resnet20.onnx"
    assert main(["export", str(tmp_path / "run"), "--output", str(out), "--data-dir", str(data)]) == 0
    assert "max |logit difference|" in capsys.readouterr().out
    info = json.loads((tmp_path / "resnet20.onnx.json").read_text())
    assert info["model"] == "resnet20" and info["check"]["count"] == 16
    assert info["check"]["max_abs_diff"] <= info["check"]["tolerance"]


def schedule_config(kind: str, **fields):
    return get_preset("standard").replace(schedule=kind, epochs=10, **fields)


def test_cosine_schedule():
    f = lr_factor(schedule_config("cosine"), 10)
    assert f(0) == 1 and math.isclose(f(50), 0.5) and math.isclose(f(25), (1 + math.cos(math.pi / 4)) / 2)
    assert f(100) == 0 and f(99) > 0
    f = lr_factor(schedule_config("cosine", warmup_fraction=0.1, lr_start_factor=0.2, lr_end_factor=0.1), 10)
    assert f(0) == 0.2 and math.isclose(f(5), 0.6) and f(10) == 1 and math.isclose(f(55), 0.55)


def test_onecycle_schedule_is_torchs_one_cycle():
    total = 97
    config = schedule_config("onecycle", warmup_fraction=0.3, lr_start_factor=1 / 25, lr_end_factor=1 / 25 / 1e4)
    ours = lr_factor(config.replace(epochs=1), total)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    torchs = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=1.0, total_steps=total, pct_start=0.3, div_factor=25, final_div_factor=1e4, cycle_momentum=False
    )
    for step in range(total):
        assert math.isclose(ours(step), torchs.get_last_lr()[0], rel_tol=1e-9, abs_tol=1e-12), step
        optimizer.step()
        torchs.step()
    assert math.isclose(ours(0), 0.04) and max(ours(s) for s in range(total)) > 0.9999


def test_step_schedule_cuts_after_each_milestone_epoch():
    f = lr_factor(schedule_config("step", milestones=[3, 6], step_factor=0.1), steps_per_epoch=10)
    assert [f(s) for s in (0, 29)] == [1, 1]  # epochs 1-3
    assert math.isclose(f(30), 0.1) and math.isclose(f(59), 0.1)  # epochs 4-6
    assert math.isclose(f(60), 0.01) and math.isclose(f(99), 0.01)
    warm = lr_factor(schedule_config("step", milestones=[3], warmup_fraction=0.05, lr_start_factor=0.1), 10)
    assert math.isclose(warm(0), 0.1) and warm(5) == 1 and math.isclose(warm(30), 0.1)


def test_schedule_sets_both_parameter_groups():
    """Through the optimizer: weights and 1-d parameters each at their base lr times the factor."""
    config = schedule_config("step", milestones=[1], lr=0.1, bias_lr_scale=2.0)
    optimizer = build_optimizer(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), config)
    schedule = Schedule(optimizer, config, steps_per_epoch=4)
    lrs = []
    for _ in range(5):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule.after_step()
    assert lrs[3] == [0.1, 0.2] and all(math.isclose(a, b) for a, b in zip(lrs[4], [0.01, 0.02]))


def test_step_schedule_settings_are_checked(capsys, tmp_path):
    with pytest.raises(ConfigError, match="bad value for milestones"):
        get_preset("he2016").replace(milestones=[123, 82])
    with pytest.raises(ConfigError, match="at least one for the step schedule"):
        get_preset("standard").replace(schedule="step")
    with pytest.raises(ConfigError, match="field 'milestones' must be list\\[int\\]"):
        get_preset("he2016").replace(milestones=[82.5])
    with pytest.raises(ConfigError, match="bad value for step_factor"):
        get_preset("he2016").replace(step_factor=2.0)
    assert parsed(["--preset", "he2016", "--milestones", "91", "137"]).milestones == [91, 137]
    assert parsed(["--preset", "he2016", "--set", "milestones=[91, 137]"]).milestones == [91, 137]


def parsed(argv: list[str]):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_recipe_presets():
    standard, he, onecycle = (get_preset(name) for name in RECIPES)
    assert (standard.model, standard.epochs, standard.schedule, standard.batch_size) == ("resnet18", 200, "cosine", 128)
    assert (standard.lr, standard.momentum, standard.nesterov, standard.weight_decay) == (0.1, 0.9, True, 5e-4)
    assert (he.model, he.epochs, he.milestones, he.step_factor, he.weight_decay) == ("resnet20", 164, [82, 123], 0.1, 1e-4)
    assert onecycle.schedule == "onecycle" and onecycle.epochs <= 30
    for preset in (standard, he, onecycle):
        assert (preset.crop_pad, preset.flip, preset.val_size) == (4, True, 5000)  # validation-only selection


@pytest.mark.parametrize("preset", [*RECIPES, "fast"])
def test_every_preset_takes_every_model(preset):
    for name in list_models():
        config = parsed(["--preset", preset, "--model", name])
        assert config.model == name
        build_on_meta(config.model, **config.model_options)  # the preset's own model options are dropped
    wide = parsed(["--preset", preset, "--model", "wrn", "--set", "model_options.widen_factor=4", "--set", "model_options.depth=16"])
    assert count_parameters(build_on_meta(wide.model, **wide.model_options)) == PUBLISHED["wrn16_4"]


def test_bad_model_option_is_a_one_line_train_error(tmp_path, capsys):
    data = write_binary(tmp_path / "data", per_batch=2, test=2).parent
    argv = [
        "train",
        "--preset",
        "standard",
        "--model",
        "wrn",
        "--set",
        "model_options.depth=27",
        "--val-size",
        "0",
        "--data-dir",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad options for model 'wrn': depth must be 6n + 4" in err
    assert not (tmp_path / "run").exists()


def test_sweep_spec_varies_model_options(tmp_path):
    from cifarlab.experiments.sweep import load_spec

    spec = tmp_path / "spec.toml"
    spec.write_text('base = "he2016"\n[fixed]\nmodel = "wrn"\n"model_options.depth" = 10\n[grid]\n"model_options.widen_factor" = [1, 2]\n')
    variants = load_spec(spec).variants
    assert [v.config.model_options for v in variants] == [{"depth": 10, "widen_factor": 1}, {"depth": 10, "widen_factor": 2}]


def test_models_command_lists_parameters_and_gflops(capsys):
    assert main(["models", "resnet20", "wrn28_10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "parameters", "GFLOPs"]
    assert lines[1].split() == ["resnet20", "269,722", "0.081"] and lines[2].split() == ["wrn28_10", "36,479,194", "10.487"]
    assert main(["models", "--json", "mobilenetv2"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["parameters"] == 2_296_922 and 0.1 < row["gflops"] < 0.3
    assert main(["models", "resnet21"]) == 1
    assert "unknown model 'resnet21'" in capsys.readouterr().err
