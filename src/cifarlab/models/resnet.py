"""ResNet-18/34/50 and PreAct-ResNet-18 with the CIFAR stem, as in kuangliu/pytorch-cifar.

    stem     conv3x3 3 -> 64, BN, ReLU (no 7x7 conv, no max-pool: 32x32 images)   64 x 32 x 32
    stage 1  blocks of width  64                                               32 x 32
    stage 2  blocks of width 128, first stride 2                               16 x 16
    stage 3  blocks of width 256, first stride 2                                8 x  8
    stage 4  blocks of width 512, first stride 2                                4 x  4
    head     global average pool, linear (512 x expansion) -> 10

ResNet-18 and 34 use basic blocks (2, 2, 2, 2 and 3, 4, 6, 3 per stage), ResNet-50 bottlenecks
(3, 4, 6, 3; expansion 4). Shortcuts project (1x1 conv + BN, He et al.'s option B) wherever the
shape changes. PreAct-ResNet-18 (He et al., Identity Mappings, 2016) puts BN-ReLU before each conv;
like kuangliu's it has no BN-ReLU after the last block, which is what gives 11,171,146 parameters.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from cifarlab.models.registry import register


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def projection(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Option B shortcut: a strided 1x1 conv and BN to the block's output shape."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    `shortcut` builds the shortcut module for a change of shape (cin, cout, stride); the
    identity is used where the shape stays.
    """

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut=projection):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity() if stride == 1 and cin == planes else shortcut(cin, planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to 4 x planes, each with BN; shortcut; ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else projection(cin, cout, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut; a projection (a plain 1x1 conv) takes
    the pre-activated input, so the identity path carries no nonlinearity."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), conv3x3(cin, planes, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), conv3x3(planes, planes)
        self.projection = None
        if stride != 1 or cin != planes:
            self.projection = nn.Conv2d(cin, planes, 1, stride=stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.projection(out) if self.projection is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def stage(block, cin: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """`blocks` blocks of width `planes`, the first with `stride`; `block(cin, planes, stride)` builds one."""
    layers = []
    for s in [stride] + [1] * (blocks - 1):
        layers.append(block(cin, planes, s))
        cin = planes * layers[-1].expansion
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    def __init__(self, block, blocks: tuple[int, int, int, int], num_classes: int = 10, stem_bn: bool = True):
        super().__init__()
        # the pre-activation net's first block normalises its own input, so its stem is a bare conv
        self.stem = nn.Sequential(conv3x3(3, 64), nn.BatchNorm2d(64), nn.ReLU()) if stem_bn else conv3x3(3, 64)
        widths, cin, stages = (64, 128, 256, 512), 64, []
        for i, (planes, n) in enumerate(zip(widths, blocks)):
            stages.append(stage(block, cin, planes, n, stride=1 if i == 0 else 2))
            cin = planes * block.expansion
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


@register("resnet18")
def resnet18(num_classes: int = 10) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


@register("resnet34")
def resnet34(num_classes: int = 10) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes)


@register("resnet50")
def resnet50(num_classes: int = 10) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


@register("preact_resnet18")
def preact_resnet18(num_classes: int = 10) -> ResNet:
    return ResNet(PreActBlock, (2, 2, 2, 2), num_classes, stem_bn=False)
