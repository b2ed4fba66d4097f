"""The report's network: 7 conv, 3 fully-connected layers, dropout, BatchNorm, LeakyReLU.

The report ("CIFAR-10 Image Classification using PyTorch", group 8) gives the layer counts
and placements but its figure with the channel widths is lost; the widths below are ours.

    block  layer                         output (C x H x W)
    1      conv3x3   3 -> 32, LReLU, BN       32 x 32 x 32
    2      conv3x3  32 -> 32, LReLU, BN       32 x 32 x 32
    3      conv3x3  32 -> 64, LReLU, BN       64 x 32 x 32
           Dropout(p=0.35)                   (after the 3rd conv layer)
    4      conv3x3  64 -> 64, LReLU, BN       64 x 32 x 32
           MaxPool 2x2, Dropout2d(p=0.48)     64 x 16 x 16
    5      conv3x3  64 -> 128, LReLU, BN     128 x 16 x 16
    6      conv3x3 128 -> 128, LReLU, BN     128 x 16 x 16
    7      conv3x3 128 -> 128, LReLU         128 x 16 x 16
           MaxPool (3, 2), Dropout2d(p=0.48) 128 x  5 x  8
    fc1    5120 -> 256, LReLU, Dropout(p=0.4)
    fc2    256 -> 128, LReLU
    fc3    128 -> 10

Six BatchNorm2d layers follow conv+activation blocks 1-6; the 7th conv goes straight
into the (3, 2) pooling and Dropout2d. 1,780,650 parameters with the default widths.
"""

from __future__ import annotations

import torch.nn as nn

from cifarlab.models.registry import finite, layer_widths, positive_int, rate, register


def _conv(cin: int, cout: int, batchnorm: bool, slope: float) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(slope)]
    return layers + [nn.BatchNorm2d(cout)] if batchnorm else layers


class PaperNet(nn.Module):
    def __init__(
        self,
        widths: tuple[int, ...] = (32, 32, 64, 64, 128, 128, 128),
        fc_widths: tuple[int, int] = (256, 128),
        conv_dropout: float = 0.35,
        dropout2d: float = 0.48,
        fc_dropout: float = 0.4,
        slope: float = 0.01,
        num_classes: int = 10,
    ):
        super().__init__()
        w = [3, *layer_widths("widths", widths, 7)]  # 7 conv layers
        fc_widths = layer_widths("fc_widths", fc_widths, 2)
        conv_dropout, dropout2d = rate("conv_dropout", conv_dropout), rate("dropout2d", dropout2d)
        fc_dropout = rate("fc_dropout", fc_dropout)
        slope = finite("slope", slope)
        num_classes = positive_int("num_classes", num_classes)
        self.features = nn.Sequential(
            *_conv(w[0], w[1], True, slope),
            *_conv(w[1], w[2], True, slope),
            *_conv(w[2], w[3], True, slope),
            nn.Dropout(conv_dropout),
            *_conv(w[3], w[4], True, slope),
            nn.MaxPool2d(2),
            nn.Dropout2d(dropout2d),
            *_conv(w[4], w[5], True, slope),
            *_conv(w[5], w[6], True, slope),
            *_conv(w[6], w[7], False, slope),
            nn.MaxPool2d((3, 2)),
            nn.Dropout2d(dropout2d),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(w[7] * 5 * 8, fc_widths[0]),
            nn.LeakyReLU(slope),
            nn.Dropout(fc_dropout),
            nn.Linear(fc_widths[0], fc_widths[1]),
            nn.LeakyReLU(slope),
            nn.Linear(fc_widths[1], num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register("paper")
def paper(**options) -> PaperNet:
    return PaperNet(**options)  # the constructor checks the options and takes lists for widths
