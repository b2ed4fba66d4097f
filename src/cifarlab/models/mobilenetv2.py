"""MobileNetV2 (Sandler et al., 2018) for 32x32 images, as kuangliu/pytorch-cifar adapts it.

    stem     conv3x3 3 -> 32, stride 1 (2 on ImageNet), BN, ReLU          32 x 32 x 32
    blocks   inverted residuals, (expansion, width, repeats, stride):
             (1, 16, 1, 1) (6, 24, 2, 1) (6, 32, 3, 2) (6, 64, 4, 2)
             (6, 96, 3, 1) (6, 160, 3, 2) (6, 320, 1, 1)                 320 x  4 x  4
    head     conv1x1 320 -> 1280, BN, ReLU; global average pool; linear 1280 -> 10

The second group's stride is 1 instead of 2, so the network ends at 4x4 instead of 1x1.
Like kuangliu's, it uses ReLU (not ReLU6), and every stride-1 block has a residual connection,
through a 1x1 conv + BN where the width changes (the paper has none there); that gives
kuangliu's 2,296,922 parameters.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from cifarlab.models.registry import register

BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise (strided), 1x1 linear projection, each with BN; ReLU after the first two."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        hidden = cin * expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3, self.bn3 = nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.residual = stride == 1
        self.shortcut: nn.Module = nn.Identity()
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers, cin = [nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()], 32
        for expansion, cout, repeats, stride in BLOCKS:
            for s in [stride] + [1] * (repeats - 1):
                layers.append(InvertedResidual(cin, cout, expansion, s))
                cin = cout
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


@register("mobilenetv2")
def mobilenetv2(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(num_classes)
