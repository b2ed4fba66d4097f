import pytest

from cifarlab.training.config import PRESETS, ConfigError, TrainConfig, get_preset


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
    finish = fast.epochs - fast.low_res_epochs
    assert finish >= 1
    assert apply_overrides(fast, {"epochs": 1}).low_res_epochs == 0  # shorter than the finish: all full resolution
    assert apply_overrides(fast, {"epochs": 12}).low_res_epochs == 12 - finish
    assert apply_overrides(fast, {"epochs": 3, "low_res_epochs": 1}).low_res_epochs == 1  # said explicitly: kept
    assert apply_overrides(get_preset("airbench94"), {"epochs": 3}).low_res_epochs == 0  # not progressive: untouched
