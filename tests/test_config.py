import pytest

from cifarlab.training.config import ConfigError, TrainConfig
from cifarlab.training.presets import PRESETS, get_preset


def test_presets_round_trip_through_dict():
    for name, preset in PRESETS.items():
        assert TrainConfig.from_dict(preset.to_dict()) == preset, name


def test_overrides_and_errors():
    c = get_preset("paper").replace(epochs=3, lr=None)
    assert c.epochs == 3 and c.lr == get_preset("paper").lr
    with pytest.raises(ConfigError, match="unknown field 'colour'"):
        TrainConfig.from_dict({"colour": 1})
    with pytest.raises(ConfigError, match="field 'epochs' must be int"):
        TrainConfig.from_dict({"epochs": "ten"})
    with pytest.raises(ConfigError, match="bad value for lr"):
        get_preset("paper").replace(lr=-1.0)
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("nope")


def test_epochs_keep_a_progressive_presets_full_resolution_finish():
    from cifarlab.training.config import apply_overrides

    fast = get_preset("fast")
    finish = fast.epochs - fast.low_res_epochs - fast.mid_res_epochs
    assert finish >= 1 and fast.mid_res_epochs == 1
    short = apply_overrides(fast, {"epochs": 1})
    assert short.low_res_epochs == short.mid_res_epochs == 0  # shorter than the finish: all full resolution
    assert apply_overrides(fast, {"epochs": finish + 1}).mid_res_epochs == 1  # the intermediate epoch comes first
    assert apply_overrides(fast, {"epochs": finish + 1}).low_res_epochs == 0
    assert apply_overrides(fast, {"epochs": 12}).low_res_epochs == 12 - finish - 1
    explicit = apply_overrides(fast, {"epochs": 6, "low_res_epochs": 1})
    assert (explicit.low_res_epochs, explicit.mid_res_epochs) == (1, 1)  # said explicitly: kept
    assert apply_overrides(get_preset("airbench94"), {"epochs": 3}).low_res_epochs == 0  # not progressive: untouched


# ---------------------------------------------------------------- issue 20: values that used to be tracebacks


def test_a_seed_torch_cannot_take_is_refused():
    from cifarlab.training.config import MAX_SEED

    with pytest.raises(ConfigError, match=r"bad value for seed: 99999999999999999999 \(allowed: 0 to 2\*\*63 - 1\)"):
        TrainConfig.from_dict({"seed": 99999999999999999999})  # was `Overflow when unpacking long long` in torch
    with pytest.raises(ConfigError, match="bad value for seed: -1"):
        TrainConfig.from_dict({"seed": -1})
    import torch

    torch.Generator().manual_seed(TrainConfig.from_dict({"seed": MAX_SEED}).seed)  # the largest allowed works


def test_milestones_are_bounded():
    with pytest.raises(ConfigError, match="bad value for milestones: \\[1, 2, 3, "):
        TrainConfig.from_dict({"schedule": "step", "milestones": list(range(1, 15001))})
    with pytest.raises(ConfigError, match="bad value for milestones"):
        TrainConfig.from_dict({"schedule": "step", "milestones": [10**9]})
    assert TrainConfig.from_dict({"schedule": "step", "milestones": list(range(1, 101)), "epochs": 164}).milestones[-1] == 100


def test_field_types_come_from_the_dataclass(monkeypatch):
    """An annotation the old string table did not know (`float | None`) is checked, not a KeyError."""
    import dataclasses

    from cifarlab.training import config as module

    @dataclasses.dataclass(frozen=True)
    class Extended(TrainConfig):
        cutoff: float | None = None

    monkeypatch.setattr(module, "_field_types", lambda: module.typing.get_type_hints(Extended))
    assert Extended.from_dict({"cutoff": None}).cutoff is None and Extended.from_dict({"cutoff": 2}).cutoff == 2
    with pytest.raises(ConfigError, match="field 'cutoff' must be float or NoneType, got 'x'"):
        Extended.from_dict({"cutoff": "x"})
    with pytest.raises(ConfigError, match="field 'seed' must be int, got True"):
        TrainConfig.from_dict({"seed": True})
    with pytest.raises(ConfigError, match=r"field 'model_options' must be dict\[str, Any\], got \[1\]"):
        TrainConfig.from_dict({"model_options": [1]})


@pytest.mark.parametrize("suffix, text", [(".toml", "a = " + "[" * 50_000), (".json", "[" * 100_000 + "]" * 100_000)])
def test_a_deeply_nested_config_file_is_one_line(tmp_path, suffix, text):
    from cifarlab.training.config import load_config_file

    path = tmp_path / f"deep{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^--config {path}: not valid (TOML|JSON) \\(nested too deeply\\)$"):
        load_config_file(path)


def test_a_deeply_nested_set_value_is_one_line():
    from cifarlab.training.config import parse_assignment

    with pytest.raises(ConfigError, match="^--set milestones: the value is nested too deeply$"):
        parse_assignment("milestones=" + "[" * 50_000 + "]" * 50_000)
