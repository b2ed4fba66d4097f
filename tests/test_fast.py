import json
import math

import pytest
import torch
import torch.nn as nn

from cifarlab.common.metrics import tta_logits
from cifarlab.models import build_model
from cifarlab.models.fast import FrozenScaleBatchNorm, patch_whitening
from cifarlab.training.config import TrainConfig
from cifarlab.training.optim import Lookahead, lr_factor
from cifarlab.training.presets import get_preset

# The SGD recipe `quick` trained with before the Muon one replaced it (airbench94's SGD version:
# Nesterov momentum 0.85, a 64x rate for BatchNorm shifts, a linear warm-up, lookahead), at tiny
# widths and, as these tests always ran it, the stem at stride 1: what the SGD tests exercise.
# airbench's lr 11.5 per 1024 examples with a summed loss is 1.5 at batch 1024 with cifarlab's
# mean-reduced one (0.75 at 512), and its weight decay 0.0153 per 1024 examples is 0.00133 here:
# the same decay per step (lr x wd).
SGD_RECIPE = TrainConfig(
    model="fast",
    model_options={"widths": [8, 16, 16]},
    batch_size=512,
    lr=0.75,
    lr_batch_size=512,
    momentum=0.85,
    nesterov=True,
    weight_decay=0.00133,
    bias_lr_scale=64.0,
    schedule="linear",
    warmup_fraction=0.23,
    lr_start_factor=0.2,
    lr_end_factor=0.07,
    lookahead=True,
    label_smoothing=0.2,
    crop_pad=2,
    flip=True,
    tta=2,
)


def test_fast_net_shapes_and_frozen_parts():
    m = build_model("fast", widths=[16, 32, 32])
    m.eval()
    assert m(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    assert not m.whiten.weight.requires_grad and m.whiten.bias.requires_grad
    bns = [x for x in m.modules() if isinstance(x, FrozenScaleBatchNorm)]
    assert len(bns) == 6 and all(not b.weight.requires_grad and b.bias.requires_grad for b in bns)
    assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == 7


def test_whitening_decorrelates_patches():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 1, 16, 16, generator=g)
    images = torch.cat([base, 0.8 * base + 0.2 * torch.randn(64, 1, 16, 16, generator=g), torch.randn(64, 1, 16, 16, generator=g)], 1)
    filters = patch_whitening(images, kernel=2, eps=1e-6)
    assert filters.shape == (24, 3, 2, 2)
    assert torch.allclose(filters[:12], -filters[12:])
    out = torch.nn.functional.conv2d(images, filters[:12])  # the 12 eigen-directions
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    covariance = flat @ flat.T / flat.shape[1]
    assert torch.allclose(covariance, torch.eye(12), atol=1e-3)


def test_init_from_data_sets_whitening_filters():
    m = build_model("fast", widths=[8, 8, 8])
    images = torch.randn(20, 3, 32, 32)
    m.init_from_data(images)
    assert torch.allclose(m.whiten.weight, patch_whitening(images))
    off = build_model("fast", widths=[8, 8, 8], whiten=False)
    before = off.whiten.weight.clone()
    off.init_from_data(images)
    assert torch.equal(off.whiten.weight, before) and off.whiten.weight.requires_grad


def test_tta_is_exact_for_symmetric_inputs():
    m = build_model("fast", widths=[8, 16, 16]).eval()
    x = torch.randn(4, 3, 32, 16)
    symmetric = torch.cat([x, x.flip(-1)], -1)  # mirror-symmetric images
    with torch.no_grad():
        assert torch.allclose(tta_logits(m, symmetric, 1), tta_logits(m, symmetric, 0), atol=1e-5)
        constant = torch.full((2, 3, 32, 32), 0.3)  # invariant to flips and reflected translations
        assert torch.allclose(tta_logits(m, constant, 2), tta_logits(m, constant, 0), atol=1e-5)
        asymmetric = torch.randn(2, 3, 32, 32)
        assert not torch.allclose(tta_logits(m, asymmetric, 1), tta_logits(m, asymmetric, 0))


def test_linear_schedule_shape():
    c = get_preset("quick").replace(epochs=1, warmup_fraction=0.25, lr_start_factor=0.2, lr_end_factor=0.07)
    f = lr_factor(c, 100)
    assert f(0) == 0.2 and abs(f(25) - 1.0) < 1e-9 and abs(f(100) - 0.07) < 1e-9
    assert f(12) < f(24) and f(50) > f(75)


def test_lookahead_pulls_towards_slow_weights():
    m = nn.Linear(2, 2)
    la = Lookahead(m, total_steps=10, every=1, decay=0.5)
    start = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    la.step(10)  # decay 0.5 at the last step: halfway back
    assert torch.allclose(m.weight, start + 0.5)
    la.step(3)  # early on the decay is 0.5 * (3/10)^3: the fast weights are almost kept
    assert torch.allclose(m.weight, start + 0.5)


def test_lookahead_finish_puts_the_slow_weights_in():
    m = nn.Linear(2, 2)
    la = Lookahead(m, total_steps=10, every=5, decay=0.5)
    slow = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    la.step(4)  # not a lookahead step (every 5): nothing moves
    assert torch.allclose(m.weight, slow + 1.0)
    la.finish()  # the model gets the slow weights (the ones evaluated and saved)
    assert torch.allclose(m.weight, slow) and torch.allclose(la.slow["weight"], slow)
    with torch.no_grad():
        m.weight.add_(1.0)
    la.step(10)  # decay 0.5: halfway from the fast weights back to the slow ones
    assert torch.allclose(m.weight, slow + 0.5)


def test_optimizer_groups_and_learning_rates():
    from cifarlab.training.optim import build_optimizer

    config = SGD_RECIPE
    model = build_model(config.model, **config.model_options)
    weights, shifts = build_optimizer(model, config).param_groups
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim == 1 for p in shifts["params"])
    assert weights["lr"] == config.lr and shifts["lr"] == config.lr * config.bias_lr_scale
    # the same decay per step in both groups: lr x weight decay
    assert weights["lr"] * weights["weight_decay"] == shifts["lr"] * shifts["weight_decay"]
    frozen = {id(model.whiten.weight)} | {id(m.weight) for m in model.modules() if isinstance(m, FrozenScaleBatchNorm)}
    trained = {id(p) for g in (weights, shifts) for p in g["params"]}
    assert not trained & frozen and len(trained) == sum(p.requires_grad for p in model.parameters())


def test_plateau_schedule_cuts_after_patience():
    from cifarlab.training.optim import Schedule, build_optimizer

    config = get_preset("paper").replace(plateau_patience=2, plateau_factor=0.1)
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, config)
    schedule = Schedule(opt, config, steps_per_epoch=10)
    lrs = []
    for loss in [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]:
        schedule.after_epoch(loss)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:4] == [0.01] * 4  # best at epoch 2, then 2 epochs of patience
    assert lrs[4] == pytest.approx(0.001) and lrs[7] == pytest.approx(0.0001)
    restored = Schedule(build_optimizer(model, config), config, 10)
    restored.load_state_dict(schedule.state_dict())
    assert restored.plateau.num_bad_epochs == schedule.plateau.num_bad_epochs


@pytest.mark.parametrize("preset", ["quick", "fast", "sgd"])
def test_fast_presets_train_on_tiny_data(tmp_path, preset):
    from cifarlab.training.train import train
    from conftest import write_binary

    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    progressive = dict(low_res_epochs=1, mid_res_epochs=0) if preset == "fast" else {}  # its SGD lr follows the batch size (lr_batch_size)
    base = SGD_RECIPE if preset == "sgd" else get_preset(preset)
    options = {**base.model_options, "widths": [8, 16, 16]}  # quick keeps its stride-2 stem
    config = base.replace(epochs=2, batch_size=64, val_size=20, model_options=options, **progressive)
    results = train(config, tmp_path / "run", data_dir=data, device="cpu", progress=False, log=lambda s: None)
    assert results["tta"] == 2 and results["epochs"] == 2
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    if preset == "sgd":
        assert metrics[1]["train_loss"] < metrics[0]["train_loss"]  # it learns: random labels are fit a little
        assert metrics[0]["lr"] < config.lr  # the linear warm-up starts low
    else:  # airbench94's schedule: no warm-up, a linear decay to 0 (Muon is too coarse to fit 200 random labels)
        assert metrics[0]["lr"] > metrics[1]["lr"] and all(m["train_loss"] < 2 * math.log(10) for m in metrics)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert TrainConfig.from_dict(saved) == config


def test_fast_is_the_anchor_with_the_searched_cpu_recipe():
    fast, anchor = get_preset("fast"), get_preset("airbench94")
    assert 0 < fast.low_res_epochs + fast.mid_res_epochs < fast.epochs and anchor.low_res_epochs == anchor.mid_res_epochs == 0
    searched = ("batch_size", "lr", "muon_lr", "label_smoothing", "whiten_bias_epochs", "low_res_epochs", "mid_res_epochs", "model_options")
    assert fast.replace(preset="airbench94", **{k: getattr(anchor, k) for k in searched}) == anchor  # the anchor's method otherwise
    assert fast.optimizer == "muon" and fast.lr_batch_size == anchor.lr_batch_size  # rates given at the anchor's batch
    with pytest.raises(ValueError, match=f"low_res_epochs: {fast.low_res_epochs} .*epochs - 1 = 1"):
        fast.replace(epochs=2)  # a shorter run must say how many of its epochs are at low resolution


def test_stem_stride_switch_keeps_the_weights_and_quarters_the_feature_maps():
    m = build_model("fast", widths=[8, 8, 8]).eval()
    x = torch.randn(2, 3, 32, 32)
    full = m.layers[:2](m.whiten(x))
    m.set_stem_stride(2)
    low = m.layers[:2](m.whiten(x))
    assert full.shape[-1] == 15 and low.shape[-1] == 8 and m(x).shape == (2, 10)
    m.set_stem_stride(None)  # back to the model's own stride: exactly the same function as before
    assert torch.equal(m.layers[:2](m.whiten(x)), full)
    with pytest.raises(ValueError):
        m.set_stem_stride(5)


def test_progressive_resolution_trains_low_then_full_and_resumes_exactly(tmp_path, monkeypatch):
    from cifarlab.models.fast import FastNet
    from cifarlab.training.train import resume, train
    from conftest import write_binary

    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    config = get_preset("fast").replace(
        epochs=3, batch_size=64, val_size=20, low_res_epochs=2, mid_res_epochs=0, tta=0, model_options={"widths": [8, 16, 16], "stem_stride": 1}
    )
    quiet = dict(data_dir=data, device="cpu", progress=False, log=lambda s: None)
    strides, set_stride = [], FastNet.set_stem_stride
    monkeypatch.setattr(FastNet, "set_stem_stride", lambda m, s: (strides.append(s), set_stride(m, s)))
    whole = train(config, tmp_path / "whole", **quiet)
    assert strides == [2, 2, None]  # the final evaluation runs at the model's own stride
    # stopped after epoch 1 (low resolution) and resumed: the same weights and test accuracy
    with pytest.raises(KeyboardInterrupt):

        def interrupt(record):
            raise KeyboardInterrupt

        train(config, tmp_path / "cut", **quiet, on_epoch=interrupt)
    resumed = resume(tmp_path / "cut", **quiet)
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_progressive_resolution_needs_a_stem_it_can_stride(tmp_path):
    from cifarlab.errors import CifarlabError
    from cifarlab.training.train import train

    with pytest.raises(CifarlabError, match="low_res_epochs"):
        get_preset("paper").replace(epochs=2, low_res_epochs=2)  # not below epochs
    from conftest import write_binary

    data = write_binary(tmp_path / "data", per_batch=20, test=20).parent
    config = get_preset("paper").replace(epochs=2, low_res_epochs=1, val_size=20)
    with pytest.raises(CifarlabError, match="stride-settable"):
        train(config, tmp_path / "run", data_dir=data, device="cpu", progress=False, log=lambda s: None)


def test_training_refuses_a_class_count_other_than_ten():
    from cifarlab.errors import CifarlabError

    with pytest.raises(CifarlabError, match="num_classes"):
        get_preset("fast").replace(model_options={"num_classes": 5})


@pytest.mark.parametrize("preset", ["fast", "airbench94", "quick"])
def test_learning_rates_follow_the_batch_size(preset):
    from cifarlab.training.optim import build_optimizer

    config = get_preset(preset)
    assert config.step_lr == config.lr * config.batch_size / config.lr_batch_size  # fast: given at the anchor's 2000, trained at 1000
    small = config.replace(batch_size=config.batch_size // 8, model_options={**config.model_options, "widths": [8, 16, 16]})
    assert small.step_lr == pytest.approx(config.step_lr / 8)  # linear scaling: each example pulls as hard
    groups = build_optimizer(build_model(small.model, **small.model_options), small).param_groups
    sgd = [g for g in groups if not g.get("muon")]
    assert sgd[0]["lr"] == pytest.approx(small.step_lr) and all(g["lr"] > 0 for g in groups)
    assert [g["lr"] for g in groups if g.get("muon")] == ([config.muon_lr] if config.optimizer == "muon" else [])  # Muon's is not scaled
    assert get_preset("paper").replace(batch_size=8).step_lr == get_preset("paper").lr  # lr_batch_size 0: lr as given


def test_intermediate_resolution_trains_on_crops_then_full_images(tmp_path, monkeypatch):
    from cifarlab.models.fast import FastNet
    from cifarlab.training.train import train
    from conftest import write_binary

    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent
    config = get_preset("fast").replace(
        epochs=4, batch_size=64, val_size=20, low_res_epochs=1, mid_res_epochs=2, mid_res_size=20, tta=0, model_options={"widths": [8, 16, 16]}
    )
    sizes, forward = [], FastNet.forward
    monkeypatch.setattr(FastNet, "forward", lambda m, x: (sizes.append((m.training, m.whiten.stride[0], x.shape[-1])), forward(m, x))[1])
    train(config, tmp_path / "run", data_dir=data, device="cpu", progress=False, log=lambda s: None)
    trained = [size for size in dict.fromkeys(sizes) if size[0]]
    assert trained == [(True, 2, 32), (True, 1, 20), (True, 1, 32)]  # low, then 20x20 crops, then full resolution
    assert {size for size in sizes if not size[0]} == {(False, 2, 32), (False, 1, 32)}  # validation and test: whole images
    with pytest.raises(ValueError, match="mid_res_epochs: 3 .*epochs - low_res_epochs - 1 = 2"):
        config.replace(mid_res_epochs=3)  # at least one full-resolution epoch


def test_the_whitening_bias_stops_its_gradient_when_its_schedule_ends_and_nothing_else_changes(tmp_path, monkeypatch):
    from cifarlab.training import learner
    from cifarlab.training.train import train
    from conftest import write_binary

    data = write_binary(tmp_path / "data", per_batch=40, test=20).parent  # 160 training images: 3 steps an epoch
    config = get_preset("fast").replace(
        epochs=3, batch_size=64, val_size=20, low_res_epochs=1, mid_res_epochs=0, whiten_bias_epochs=1, tta=0, model_options={"widths": [8, 16, 16]}
    )
    quiet = dict(data_dir=data, device="cpu", progress=False, log=lambda s: None)
    stop, learning = learner._stop_finished_bias_gradients, []

    def watched(optimizer):
        stop(optimizer)
        learning.extend(p.requires_grad for g in optimizer.param_groups if g.get("whiten_bias") for p in g["params"])

    monkeypatch.setattr(learner, "_stop_finished_bias_gradients", watched)
    stopped = train(config, tmp_path / "stopped", **quiet)
    assert learning == [True] * 3 + [False] * 6  # one epoch of 3 steps, then no gradient
    monkeypatch.setattr(learner, "_stop_finished_bias_gradients", lambda optimizer: None)
    computed = train(config, tmp_path / "computed", **quiet)  # the gradient computed all along, at lr 0
    a = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "computed" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a) and stopped["test_accuracy"] == computed["test_accuracy"]
