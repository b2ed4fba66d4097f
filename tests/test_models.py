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
    kinds = [type(l) for l in m.modules()]
    assert kinds.count(nn.Conv2d) == 7
    assert kinds.count(nn.Linear) == 3
    assert kinds.count(nn.Dropout2d) == 2
    assert kinds.count(nn.Dropout) == 2
    assert kinds.count(nn.MaxPool2d) == 2
    assert kinds.count(nn.BatchNorm2d) == 6
    assert kinds.count(nn.LeakyReLU) == 9  # every conv and fc layer except the output
    pools = [l for l in m.modules() if isinstance(l, nn.MaxPool2d)]
    assert pools[0].kernel_size == 2 and pools[1].kernel_size == (3, 2)
    drops = [l.p for l in m.modules() if isinstance(l, (nn.Dropout, nn.Dropout2d))]
    assert drops == [0.35, 0.48, 0.48, 0.4]
    m.eval()
    assert m(torch.randn(5, 3, 32, 32)).shape == (5, 10)
    assert count_parameters(m) == 1_780_650
