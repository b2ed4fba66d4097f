import pytest
import torch
import torch.nn as nn

from cifarlab.models import ModelError, build_model, count_parameters, list_models


def test_registry_lists_and_rejects():
    assert "paper" in list_models()
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        build_model("nope")
    with pytest.raises(ModelError, match="bad options for model 'paper'"):
        build_model("paper", colour=3)


def test_paper_network_layer_counts_and_output():
    m = build_model("paper")
    kinds = [type(layer) for layer in m.modules()]
    assert kinds.count(nn.Conv2d) == 7
    assert kinds.count(nn.Linear) == 3
    assert kinds.count(nn.Dropout2d) == 2
    assert kinds.count(nn.Dropout) == 2
    assert kinds.count(nn.MaxPool2d) == 2
    assert kinds.count(nn.BatchNorm2d) == 6
    assert kinds.count(nn.LeakyReLU) == 9  # every conv and fc layer except the output
    pools = [layer for layer in m.modules() if isinstance(layer, nn.MaxPool2d)]
    assert nn.modules.utils._pair(pools[0].kernel_size) == (2, 2) and pools[1].kernel_size == (3, 2)
    drops = [layer.p for layer in m.modules() if isinstance(layer, (nn.Dropout, nn.Dropout2d))]
    assert drops == [0.35, 0.48, 0.48, 0.4]
    m.eval()
    assert m(torch.randn(5, 3, 32, 32)).shape == (5, 10)
    assert count_parameters(m) == 1_780_650


@pytest.mark.parametrize(
    "model, options, message",
    [
        ("fast", {"widths": [64, -5, 256]}, "widths must be a list of 3 integers from 1 to 4096, got [64, -5, 256]"),
        ("fast", {"widths": [64, 0, 256]}, "widths must be a list of 3"),  # builds, then never learns
        ("fast", {"widths": [64, 256]}, "widths must be a list of 3"),
        ("fast", {"widths": [64, 4097, 256]}, "from 1 to 4096"),  # a typo that would fail only at allocation
        ("fast", {"widths": 64}, "widths must be a list of 3"),
        ("fast", {"stem_stride": 0}, "stem_stride must be a positive integer at most 4"),
        ("fast", {"stem_stride": 5}, "stem_stride must be a positive integer at most 4"),  # fails on its first image
        ("fast", {"bn_momentum": 1.5}, "bn_momentum must be a number from 0 up to"),
        ("fast", {"scale": float("inf")}, "scale must be a finite positive number"),
        ("fast", {"whiten": "no"}, "whiten must be true or false"),
        ("fast", {"num_classes": 0}, "num_classes must be a positive integer"),
        ("paper", {"widths": [8, 8, 8, 8, 16, 16, -1]}, "widths must be a list of 7 integers from 1 to 4096"),
        ("paper", {"widths": [8, 8, 8, 8, 16, 16, True]}, "widths must be a list of 7"),
        ("paper", {"fc_widths": [0, 16]}, "fc_widths must be a list of 2 integers"),
        ("paper", {"fc_dropout": 1.0}, "fc_dropout must be a number from 0 up to (not including) 1, got 1.0"),
        ("paper", {"conv_dropout": -0.1}, "conv_dropout must be a number from 0 up to"),
        ("paper", {"dropout2d": "x"}, "dropout2d must be a number"),
        ("paper", {"slope": float("nan")}, "slope must be a finite number"),
        ("paper", {"num_classes": -3}, "num_classes must be a positive integer, got -3"),
    ],
)
def test_bad_model_options_are_one_line_value_errors(model, options, message):
    with pytest.raises(ValueError) as raised:
        build_model(model, **options)
    assert isinstance(raised.value, ModelError) and message in str(raised.value) and "\n" not in str(raised.value)


def test_options_at_the_edges_of_their_ranges_build_and_run():
    assert build_model("fast", widths=[1, 1, 1], stem_stride=4, bn_momentum=0.0, whiten=False)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build_model("paper", widths=(1,) * 7, fc_widths=[1, 1], fc_dropout=0, num_classes=2)(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_paper_search_space_options():
    """The report's search axes as model options; the defaults keep the original module names."""
    import torch

    default = build_model("paper")
    assert count_parameters(default) == 1_780_650
    assert [k for k in default.state_dict()][:3] == ["features.0.weight", "features.0.bias", "features.2.weight"]
    pooled = build_model("paper", pool1=[2, 2], pool2=[2, 2])  # 128 x 8 x 8 into the first fc layer
    assert pooled.classifier[1].in_features == 128 * 8 * 8
    assert pooled(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    extra = build_model("paper", extra_dropout=0.2, extra_dropout_after=[1, 5])
    dropouts = [m for m in extra.features if type(m) is torch.nn.Dropout]
    assert len(dropouts) == 3 and count_parameters(extra) == 1_780_650
    for bad in ({"pool2": [9, 2]}, {"pool1": [16, 16], "pool2": [3, 3]}, {"extra_dropout_after": [0]}, {"pool1": [2, 2, 2]}):
        with pytest.raises(ModelError):
            build_model("paper", **bad)
