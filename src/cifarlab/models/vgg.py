"""VGG-11/13/16/19 with BatchNorm, for 32x32 images (kuangliu/pytorch-cifar's VGG).

Simonyan and Zisserman's configurations A, B, D and E: conv3x3 (with bias) + BN + ReLU layers
of the widths below, "M" a 2x2 max pool. Five pools take 32x32 to 1x1, so the three 4096-wide
fully-connected layers of the ImageNet network become one linear layer 512 -> 10.
"""

from __future__ import annotations

import torch.nn as nn

from cifarlab.models.registry import register

CONFIGS: dict[int, list[int | str]] = {  # conv widths; "M" a max-pool
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for width in CONFIGS[depth]:
            if isinstance(width, str):  # "M"
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                cin = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def _register(depth: int) -> None:
    @register(f"vgg{depth}")
    def build(num_classes: int = 10) -> VGG:
        return VGG(depth, num_classes)


for _depth in CONFIGS:
    _register(_depth)
