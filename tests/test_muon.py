"""airbench94_muon's pieces: Newton-Schulz, the Muon/SGD optimizer, the whitening-bias schedule, alternating flips."""

import math

import pytest
import torch
import torch.nn as nn

from cifarlab.data.augment import alternating_flips
from cifarlab.models import build_model
from cifarlab.training.config import get_preset
from cifarlab.training.optim import Muon, Schedule, build_optimizer, newton_schulz


def test_newton_schulz_nearly_orthogonalises():
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(288, 64, generator=gen))
    g = u @ torch.diag(torch.logspace(0, -1.3, 64)) @ v.T  # singular values spread 20x
    s = torch.linalg.svdvals(newton_schulz(g).float())
    assert s.min() > 0.3 and s.max() < 1.7 and s.max() / s.min() < 4  # U S' V^T with S' near 1
    assert newton_schulz(g.T).shape == (9 * 32, 64)  # tall matrices too


def test_sgd_groups_match_torch_sgd():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    ours = Muon([dict(params=list(a.parameters()), lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.01, muon=False)])
    reference = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.01)
    for step in range(3):
        x = torch.randn(4, 5, generator=torch.Generator().manual_seed(step))
        for model, opt in ((a, ours), (b, reference)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_muon_renormalises_filters_and_steps_by_the_orthogonalised_momentum():
    conv = nn.Conv2d(8, 16, 3, bias=False)
    conv.weight.data.mul_(5)
    opt = Muon([dict(params=[conv.weight], lr=0.0, momentum=0.6, nesterov=True, weight_decay=0.0, muon=True)])
    conv.weight.grad = torch.randn_like(conv.weight)
    opt.step()
    assert conv.weight.norm().item() == pytest.approx(math.sqrt(16), rel=1e-5)  # lr 0: only the renormalisation
    before = conv.weight.detach().clone()
    opt.param_groups[0]["lr"] = 0.1
    opt.step()
    expected_update = newton_schulz((conv.weight.grad * 1.6 + 0.6 * 0.6 * conv.weight.grad).reshape(16, -1))
    # second step: buffer = 0.6 * g + g, Nesterov update = g + 0.6 * buffer
    update = (before * (math.sqrt(16) / before.norm()) - conv.weight).reshape(16, -1) / 0.1
    torch.testing.assert_close(update, expected_update.float(), atol=2e-2, rtol=2e-2)


def test_airbench94_parameter_groups_and_whitening_bias_schedule():
    config = get_preset("airbench94")
    model = build_model(config.model, **config.model_options)
    opt = build_optimizer(model, config)
    assert isinstance(opt, Muon)
    groups = {("muon" if g["muon"] else "whiten" if g.get("whiten_bias") else "head" if g["params"][0].ndim == 2 else "bias"): g
              for g in opt.param_groups}
    assert groups["muon"]["lr"] == 0.24 and groups["muon"]["momentum"] == 0.6
    assert all(p.ndim == 4 and p.requires_grad for p in groups["muon"]["params"])
    assert groups["head"]["params"] == [model.head.weight] and groups["head"]["lr"] == pytest.approx(0.67 * 2000)
    assert groups["bias"]["lr"] == pytest.approx(0.053 * 2000) and groups["whiten"]["params"] == [model.whiten.bias]
    # decay per step (lr x weight decay) is airbench's 2e-6 x batch in both SGD groups
    for name in ("head", "bias", "whiten"):
        assert groups[name]["lr"] * groups[name]["weight_decay"] == pytest.approx(2e-6 * 2000)
    trained = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert trained == sum(p.numel() for p in model.parameters() if p.requires_grad)

    steps_per_epoch = 25
    schedule = Schedule(opt, config, steps_per_epoch)
    lrs = []
    for _ in range(8 * steps_per_epoch):
        schedule.before_step()
        lrs.append((groups["whiten"]["lr"] / groups["whiten"]["base_lr"], groups["muon"]["lr"] / 0.24))
    assert lrs[0] == (1.0, 1.0)
    assert lrs[3 * steps_per_epoch][0] == 0.0 and lrs[3 * steps_per_epoch - 1][0] > 0  # bias stops after 3 epochs
    assert lrs[100][1] == pytest.approx(0.5) and lrs[-1][1] == pytest.approx(1 / 200)  # linear to 0 over 200 steps


def test_alternating_flips_show_every_image_both_ways():
    first, second, third = (alternating_flips(1000, seed=3, epoch=e) for e in (1, 2, 3))
    assert torch.equal(first, ~second) and torch.equal(first, third)
    assert 400 < int(first.sum()) < 600
    assert torch.equal(first, alternating_flips(1000, seed=3, epoch=1))  # deterministic from the seed
    assert not torch.equal(first, alternating_flips(1000, seed=4, epoch=1))
