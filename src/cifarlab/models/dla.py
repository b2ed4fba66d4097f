"""Deep Layer Aggregation (Yu et al., 2018) for CIFAR, as kuangliu/pytorch-cifar builds it: DLA and SimpleDLA.

    base     conv3x3 3 -> 16, BN, ReLU; conv3x3 16 -> 16, BN, ReLU; conv3x3 16 -> 32, BN, ReLU
    tree 1   level 1,  32 ->  64                                   64 x 32 x 32
    tree 2   level 2,  64 -> 128, stride 2                        128 x 16 x 16
    tree 3   level 2, 128 -> 256, stride 2                        256 x  8 x  8
    tree 4   level 1, 256 -> 512, stride 2                        512 x  4 x  4
    head     global average pool, linear 512 -> 10

Blocks are ResNet basic blocks (projection shortcuts). A root aggregates the feature maps handed
to it: concatenation, 1x1 conv, BN, ReLU.

- DLA: a level-L tree chains its subtrees of levels L-1 ... 1 and then two blocks, and its root
  takes every one of their outputs and, above level 1, that of one more block applied to the
  tree's input (kuangliu's prev_root; 16,291,386 parameters in all).
- SimpleDLA: a level-L tree is two level-(L-1) trees in sequence whose outputs its root joins
  (a binary tree of blocks, two maps per root).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cifarlab.models.registry import register
from cifarlab.models.resnet import BasicBlock, conv3x3


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.ReLU())


class Root(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, maps: list[torch.Tensor]):
        return torch.relu(self.bn(self.conv(torch.cat(maps, 1))))


class Tree(nn.Module):
    """DLA's tree of level L: subtrees of levels L-1 down to 1 in sequence, then two blocks; above
    level 1 also one block straight from the input. The root joins all their outputs (L + 2 maps
    above level 1, 2 at level 1)."""

    def __init__(self, cin: int, cout: int, level: int = 1, stride: int = 1):
        super().__init__()
        # the first subtree takes the input (and the stride); the rest continue at cout
        self.subtrees = nn.ModuleList(Tree(cin, cout, i, stride) if i == level - 1 else Tree(cout, cout, i) for i in reversed(range(1, level)))
        self.from_input = BasicBlock(cin, cout, stride) if level > 1 else None
        self.left = BasicBlock(cout if level > 1 else cin, cout, 1 if level > 1 else stride)
        self.right = BasicBlock(cout, cout)
        self.root = Root((level + 2 if level > 1 else 2) * cout, cout)

    def forward(self, x):
        maps = [self.from_input(x)] if self.from_input is not None else []
        for subtree in self.subtrees:
            x = subtree(x)
            maps.append(x)
        x = self.left(x)
        maps.append(x)
        maps.append(self.right(x))
        return self.root(maps)


class SimpleTree(nn.Module):
    """SimpleDLA's tree: two trees (or blocks, at level 1) in sequence; the root joins their outputs."""

    def __init__(self, cin: int, cout: int, level: int = 1, stride: int = 1):
        super().__init__()
        self.left: nn.Module
        self.right: nn.Module
        if level == 1:
            self.left, self.right = BasicBlock(cin, cout, stride), BasicBlock(cout, cout)
        else:
            self.left, self.right = SimpleTree(cin, cout, level - 1, stride), SimpleTree(cout, cout, level - 1)
        self.root = Root(2 * cout, cout)

    def forward(self, x):
        left = self.left(x)
        return self.root([left, self.right(left)])


class DLA(nn.Module):
    def __init__(self, tree=Tree, num_classes: int = 10):
        super().__init__()
        self.base = nn.Sequential(conv_bn_relu(3, 16), conv_bn_relu(16, 16), conv_bn_relu(16, 32))
        self.trees = nn.Sequential(tree(32, 64, 1, 1), tree(64, 128, 2, 2), tree(128, 256, 2, 2), tree(256, 512, 1, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x):
        return self.head(self.trees(self.base(x)))


@register("dla")
def dla(num_classes: int = 10) -> DLA:
    return DLA(Tree, num_classes)


@register("simple_dla")
def simple_dla(num_classes: int = 10) -> DLA:
    return DLA(SimpleTree, num_classes)
