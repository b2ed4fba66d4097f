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
