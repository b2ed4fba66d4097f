"""airbench94_muon's pieces: Newton-Schulz, the Muon/SGD optimizer, the whitening-bias schedule, alternating flips."""

import math

import pytest
import torch
import torch.nn as nn

from cifarlab.data.augment import alternating_flips
from cifarlab.models import build_model
from cifarlab.training.optim import Muon, Schedule, build_optimizer, newton_schulz
from cifarlab.training.presets import get_preset


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


def test_newton_schulz_keeps_the_singular_vectors():
    """Against the SVD (an independent reference): NS(G) = U S' V^T for G = U S V^T, S' near 1."""
    gen = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(32, 32, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(96, 32, generator=gen))
    g = u @ torch.diag(torch.logspace(0, -1, 32)) @ v.T
    inner = u.T @ newton_schulz(g).float() @ v  # S' when the singular vectors are kept
    diagonal = torch.diagonal(inner)
    assert diagonal.min() > 0.5 and diagonal.max() < 1.5
    assert (inner - torch.diag(diagonal)).abs().max() < 0.05  # bfloat16's rounding, no more
    assert not torch.allclose(newton_schulz(g).float(), u @ v.T, atol=0.05)  # S' is not 1: it is NS, not the SVD


needs_torch_muon = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon (added in recent releases)")


def torch_muon_reference(weight: torch.Tensor, grads: list[torch.Tensor], lr: float, momentum: float) -> list[torch.Tensor]:
    """torch.optim.Muon's updates (its own Newton-Schulz, momentum and Nesterov), set as this
    project's Muon computes: 3 Newton-Schulz steps (torch's default is 5), no weight decay (torch's
    default is 0.1), Keller Jordan's coefficients (torch's default too)."""
    p = nn.Parameter(weight.clone())
    opt = torch.optim.Muon(
        [p], lr=lr, weight_decay=0.0, momentum=momentum, nesterov=True, ns_steps=3, ns_coefficients=(3.4445, -4.7750, 2.0315), adjust_lr_fn="original"
    )
    updates = []
    for grad in grads:
        before = p.detach().clone()
        p.grad = grad.clone()
        opt.step()
        updates.append((before - p.detach()) / lr)
    return updates


@needs_torch_muon
@pytest.mark.parametrize("shape", [(16, 16), (16, 72)])
def test_muon_agrees_with_torchs_muon_on_2d_weights(shape):
    """torch.optim.Muon takes only 2-D parameters and does not renormalise; on 2-D weights (square or
    wide, where torch's "original" lr adjustment sqrt(max(1, rows/cols)) is 1) the orthogonalised
    update is the same. Not bit for bit: torch fuses the iteration with addmm, in bfloat16, so the
    two round differently: 2e-2 is a few bfloat16 steps at these magnitudes (entries of about 0.1),
    where a momentum of 0.9 instead of 0.6 moves the update by 0.12."""
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(*shape, generator=gen)
    weight *= math.sqrt(shape[0]) / weight.norm()  # the norm our renormalisation keeps: its first step is a no-op
    grads = [torch.randn(*shape, generator=gen) for _ in range(3)]
    expected = torch_muon_reference(weight, grads, lr=0.1, momentum=0.6)
    p = nn.Parameter(weight.clone())
    ours = Muon([dict(params=[p], lr=0.1, momentum=0.6, nesterov=True, weight_decay=0.0, muon=True)])
    for step, grad in enumerate(grads):
        renormalised = p.detach() * (math.sqrt(shape[0]) / p.detach().norm())  # what our step starts from
        p.grad = grad.clone()
        ours.step()
        update = (renormalised - p.detach()) / 0.1
        torch.testing.assert_close(update, expected[step], atol=2e-2, rtol=0, msg=f"step {step}")
    assert p.norm().item() != pytest.approx(math.sqrt(shape[0]), rel=1e-3)  # it moved off the norm it is brought back to


@needs_torch_muon
def test_muon_renormalises_filters_and_steps_by_the_orthogonalised_momentum():
    conv = nn.Conv2d(8, 16, 3, bias=False)
    conv.weight.data.mul_(5)
    opt = Muon([dict(params=[conv.weight], lr=0.0, momentum=0.6, nesterov=True, weight_decay=0.0, muon=True)])
    grad = torch.randn_like(conv.weight)
    conv.weight.grad = grad
    opt.step()
    assert conv.weight.norm().item() == pytest.approx(math.sqrt(16), rel=1e-5)  # lr 0: only the renormalisation
    before = conv.weight.detach().clone()
    opt.param_groups[0]["lr"] = 0.1
    opt.step()
    # torch's Muon on the flattened filters, fed the same two gradients, gives the second update
    expected = torch_muon_reference(before.reshape(16, -1), [grad.reshape(16, -1)] * 2, lr=0.1, momentum=0.6)[1]
    update = (before * (math.sqrt(16) / before.norm()) - conv.weight).reshape(16, -1) / 0.1
    torch.testing.assert_close(update, expected, atol=2e-2, rtol=0)


def test_airbench94_parameter_groups_and_whitening_bias_schedule():
    config = get_preset("airbench94")
    model = build_model(config.model, **config.model_options)
    opt = build_optimizer(model, config)
    assert isinstance(opt, Muon)
    groups = {
        ("muon" if g["muon"] else "whiten" if g.get("whiten_bias") else "head" if g["params"][0].ndim == 2 else "bias"): g for g in opt.param_groups
    }
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
        lrs.append((groups["whiten"]["lr"] / groups["whiten"]["initial_lr"], groups["muon"]["lr"] / 0.24))
        opt.step()  # no gradients: moves nothing, but LambdaLR expects it before its own step
        schedule.after_step()
    assert lrs[0] == (1.0, 1.0)
    assert lrs[3 * steps_per_epoch][0] == 0.0 and lrs[3 * steps_per_epoch - 1][0] > 0  # bias stops after 3 epochs
    assert lrs[100][1] == pytest.approx(0.5) and lrs[-1][1] == pytest.approx(1 / 200)  # linear to 0 over 200 steps


def test_alternating_flips_show_every_image_both_ways():
    first, second, third = (alternating_flips(1000, seed=3, epoch=e) for e in (1, 2, 3))
    assert torch.equal(first, ~second) and torch.equal(first, third)
    assert 400 < int(first.sum()) < 600
    assert torch.equal(first, alternating_flips(1000, seed=3, epoch=1))  # deterministic from the seed
    assert not torch.equal(first, alternating_flips(1000, seed=4, epoch=1))
