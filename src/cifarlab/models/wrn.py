"""Wide residual networks (Zagoruyko and Komodakis, 2016): WRN-depth-k, e.g. WRN-28-10, WRN-16-4.

    stem     conv3x3 3 -> 16                                      16 x 32 x 32
    stage 1  n pre-activation blocks, width 16k                   32 x 32
    stage 2  n blocks, width 32k, first stride 2                  16 x 16
    stage 3  n blocks, width 64k, first stride 2                   8 x  8
    head     BN, ReLU, global average pool, linear 64k -> 10

depth = 6n + 4. A block is BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 plus the shortcut; where
the width changes (the first block of each stage) the shortcut is a 1x1 conv of the
pre-activated input. Dropout between the convs is the paper's option (0.3 in its best runs).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from cifarlab.models.registry import register
from cifarlab.models.resnet import conv3x3


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), conv3x3(cout, cout)
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.projection(out) if self.projection is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40), got {depth}")
        if not (isinstance(widen_factor, int) and widen_factor >= 1):
            raise ValueError(f"widen_factor must be a whole number >= 1, got {widen_factor!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        layers: list[nn.Module] = [conv3x3(3, 16)]
        cin = 16
        for i, cout in enumerate(widths):
            for j in range(n):
                layers.append(WideBlock(cin, cout, 2 if i > 0 and j == 0 else 1, dropout))
                cin = cout
        self.features = nn.Sequential(*layers, nn.BatchNorm2d(cin), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He initialisation, as the paper's code
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.features(x))


@register("wrn")
def wrn(depth: int = 28, widen_factor: int = 10, dropout: float = 0.0, num_classes: int = 10) -> WideResNet:
    return WideResNet(depth, widen_factor, dropout, num_classes)


@register("wrn16_4")
def wrn16_4(dropout: float = 0.0, num_classes: int = 10) -> WideResNet:
    return WideResNet(16, 4, dropout, num_classes)


@register("wrn28_10")
def wrn28_10(dropout: float = 0.0, num_classes: int = 10) -> WideResNet:
    return WideResNet(28, 10, dropout, num_classes)
