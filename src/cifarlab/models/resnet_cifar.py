"""He et al.'s CIFAR ResNets (Deep Residual Learning, 2016, section 4.2): ResNet-20, 32, 44, 56, 110.

    stem     conv3x3 3 -> 16, BN, ReLU                      16 x 32 x 32
    stage 1  n basic blocks, width 16                       16 x 32 x 32
    stage 2  n basic blocks, width 32, first stride 2       32 x 16 x 16
    stage 3  n basic blocks, width 64, first stride 2       64 x  8 x  8
    head     global average pool, linear 64 -> 10

depth = 6n + 2 (n = 3, 5, 7, 9, 18). Shortcuts are option A by default, as in the paper's CIFAR
experiments: identity, and where a block halves the resolution and doubles the width, the input
subsampled by 2 with the new channels zero. They add no parameters, which gives Table 6's counts
(ResNet-20 0.27 M ... ResNet-110 1.7 M). shortcut="B" projects there instead (1x1 conv + BN).
Convs start from He initialisation (normal, fan-out), as the paper's own networks did.
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn
import torch.nn.functional as F

from cifarlab.models.registry import register
from cifarlab.models.resnet import BasicBlock, conv3x3, projection, stage


class ZeroPadShortcut(nn.Module):
    """Option A: every other pixel, and zero channels added on both sides up to the new width."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.before, self.after = stride, (cout - cin) // 2, cout - cin - (cout - cin) // 2

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))  # pads (W, H, C), last dimension first


class CifarResNet(nn.Module):
    def __init__(self, depth: int, shortcut: str = "A", num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-padded identity) or 'B' (projection), got {shortcut!r}")
        n = (depth - 2) // 6
        kind = ZeroPadShortcut if shortcut == "A" else projection
        block = partial(BasicBlock, shortcut=kind)
        self.stem = nn.Sequential(conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU())
        self.stages = nn.Sequential(stage(block, 16, 16, n, 1), stage(block, 16, 32, n, 2), stage(block, 32, 64, n, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def _register(depth: int) -> None:
    @register(f"resnet{depth}")
    def build(shortcut: str = "A", num_classes: int = 10) -> CifarResNet:
        return CifarResNet(depth, shortcut, num_classes)


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
