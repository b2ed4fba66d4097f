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

from cifarlab.models.registry import ModelError, finite, layer_widths, positive_int, rate, register


def _conv(cin: int, cout: int, batchnorm: bool, slope: float) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(slope)]
    return layers + [nn.BatchNorm2d(cout)] if batchnorm else layers


def pool_kernel(option: str, value) -> tuple[int, int]:
    """A max-pool kernel: [h, w] (or one int for both), each 1 to 8."""
    pair = [value, value] if not isinstance(value, (list, tuple)) else list(value)
    if len(pair) != 2:
        raise ModelError(f"{option} must be [height, width] or one integer, got {value!r}")
    height, width = (positive_int(option, v, most=8) for v in pair)
    return height, width


class PaperNet(nn.Module):
    """The report's network; every option below is one axis of the report's own search
    (dropout probabilities, channel counts, pooling kernel sizes, added dropout between convs)."""

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 32, 64, 64, 128, 128, 128),
        fc_widths: tuple[int, int] = (256, 128),
        conv_dropout: float = 0.35,
        dropout2d: float = 0.48,
        fc_dropout: float = 0.4,
        slope: float = 0.01,
        num_classes: int = 10,
        pool1: tuple[int, int] = (2, 2),  # after the 4th conv
        pool2: tuple[int, int] = (3, 2),  # after the 7th conv
        extra_dropout: float = 0.0,  # the report's "further work": more Dropout between convs ...
        extra_dropout_after: tuple[int, ...] = (),  # ... after these conv layers (1-7; the 3rd has one)
    ):
        super().__init__()
        w = [3, *layer_widths("widths", widths, 7)]  # 7 conv layers
        fc1, fc2 = layer_widths("fc_widths", fc_widths, 2)  # the two hidden fc layers
        conv_dropout, dropout2d = rate("conv_dropout", conv_dropout), rate("dropout2d", dropout2d)
        fc_dropout, extra_dropout = rate("fc_dropout", fc_dropout), rate("extra_dropout", extra_dropout)
        slope = finite("slope", slope)
        num_classes = positive_int("num_classes", num_classes)
        pool1, pool2 = pool_kernel("pool1", pool1), pool_kernel("pool2", pool2)
        extra = _conv_positions(extra_dropout_after)
        height, width = 32 // pool1[0] // pool2[0], 32 // pool1[1] // pool2[1]
        if height < 1 or width < 1:
            raise ModelError(f"pool1 {list(pool1)} and pool2 {list(pool2)} leave no pixels of a 32x32 image")

        def conv(n: int) -> list[nn.Module]:  # conv layer n (1-7), with an added Dropout if asked
            layers = _conv(w[n - 1], w[n], n <= 6, slope)
            return layers + [nn.Dropout(extra_dropout)] if n in extra else layers

        # Default options build exactly the modules (and state-dict names) of the original network.
        self.features = nn.Sequential(
            *conv(1),
            *conv(2),
            *conv(3),
            nn.Dropout(conv_dropout),
            *conv(4),
            nn.MaxPool2d(pool1),
            nn.Dropout2d(dropout2d),
            *conv(5),
            *conv(6),
            *conv(7),
            nn.MaxPool2d(pool2),
            nn.Dropout2d(dropout2d),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(w[7] * height * width, fc1),
            nn.LeakyReLU(slope),
            nn.Dropout(fc_dropout),
            nn.Linear(fc1, fc2),
            nn.LeakyReLU(slope),
            nn.Linear(fc2, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def _conv_positions(value) -> set[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 7 for v in value):
        raise ModelError(f"extra_dropout_after must be a list of conv layer numbers from 1 to 7, got {value!r}")
    return set(value)


@register("paper")
def paper(**options) -> PaperNet:
    return PaperNet(**options)  # the constructor checks the options and takes lists for widths
