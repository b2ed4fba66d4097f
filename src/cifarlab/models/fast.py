"""A fast CIFAR-10 network in the airbench / hlb-CIFAR10 line of work.

    whiten   conv2x2 3 -> 24, frozen weights from the training images' patch covariance, GELU
    block 1  conv3x3 -> w1, MaxPool 2, BN, GELU, conv3x3 w1 -> w1, BN, GELU
    block 2  conv3x3 -> w2, MaxPool 2, BN, GELU, conv3x3 w2 -> w2, BN, GELU
    block 3  conv3x3 -> w3, MaxPool 2, BN, GELU, conv3x3 w3 -> w3, BN, GELU
    head     global max pool, linear w3 -> 10 (no bias), times `scale`

What each piece is for (the ablation in benchmarks/ measures them on the validation split):
- The whitening layer decorrelates 2x2 patches before any learning, so the first trained
  layer sees well-conditioned inputs; it is 24 filters (12 eigenvectors and their negatives,
  so a following GELU keeps both signs), never trained.
- BatchNorm scales are frozen at 1 (only shifts learn) and its momentum is high (0.6 in
  airbench's convention, 1 - 0.6 in PyTorch's): at few, large steps the running statistics
  must follow the weights quickly.
- Convs start as identity (Dirac) on their first input channels: signal passes on step 0.
- The output is scaled down (1/9) so initial logits are small, as label smoothing wants.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cifarlab.models.registry import finite, flag, layer_widths, positive_int, rate, register

# The whitening stem maps 32x32 to (32 - 2) // stride + 1 pixels a side and three 2x2 max pools
# follow, which need at least 8: a stride above 4 builds a network that fails on its first image.
MAX_STEM_STRIDE = 4


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1; `momentum` is the weight of the old running statistics."""

    def __init__(self, channels: int, momentum: float = 0.6, eps: float = 1e-12):
        super().__init__(channels, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class DiracConv(nn.Conv2d):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        torch.nn.init.dirac_(w[: min(w.size(0), w.size(1))])


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, bn_momentum: float):
        super().__init__()
        self.conv1 = DiracConv(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FrozenScaleBatchNorm(cout, bn_momentum)
        self.conv2 = DiracConv(cout, cout)
        self.norm2 = FrozenScaleBatchNorm(cout, bn_momentum)
        self.act = nn.GELU()

    def forward(self, x):
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


def patch_whitening(images: torch.Tensor, kernel: int = 2, eps: float = 5e-4) -> torch.Tensor:
    """Whitening filters (2*C*k*k, C, k, k) from the covariance of all k x k patches of `images`.

    Each eigenvector of the patch covariance, scaled by 1/sqrt(eigenvalue + eps), becomes one
    filter, followed by its negative; largest eigenvalues first.
    """
    c = images.shape[1]
    patches = images.float().unfold(2, kernel, 1).unfold(3, kernel, 1)  # N, C, H', W', k, k
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kernel * kernel)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
    filters = (eigenvectors / torch.sqrt(eigenvalues.clamp(min=0) + eps).view(-1, 1)).view(-1, c, kernel, kernel)
    return torch.cat([filters, -filters])


class FastNet(nn.Module):
    def __init__(
        self,
        widths: tuple[int, int, int] = (64, 256, 256),
        bn_momentum: float = 0.6,
        scale: float = 1 / 9,
        whiten: bool = True,
        stem_stride: int = 1,
        head_std: float = 0.0,
        num_classes: int = 10,
    ):
        super().__init__()
        w = layer_widths("widths", widths, 3)
        bn_momentum, scale = rate("bn_momentum", bn_momentum), finite("scale", scale, positive=True)
        whiten, num_classes = flag("whiten", whiten), positive_int("num_classes", num_classes)
        stem_stride = positive_int("stem_stride", stem_stride, most=MAX_STEM_STRIDE)
        # stem_stride=2 whitens non-overlapping 2x2 patches: every later layer then works on a
        # quarter of the pixels, the main lever for speed on a CPU.
        self.whiten = nn.Conv2d(3, 24, kernel_size=2, stride=stem_stride, padding=0, bias=True)
        self.stem_stride = stem_stride
        self.whiten.weight.requires_grad_(not whiten)  # a plain trained conv when whitening is off
        self.use_whitening = whiten
        self.layers = nn.Sequential(
            nn.GELU(),
            ConvGroup(24, w[0], bn_momentum),
            ConvGroup(w[0], w[1], bn_momentum),
            ConvGroup(w[1], w[2], bn_momentum),
            nn.AdaptiveMaxPool2d(1),  # a 3x3 max pool at 32x32 input, as in airbench
            nn.Flatten(),
        )
        self.head = nn.Linear(w[2], num_classes, bias=False)
        if head_std:  # airbench94_muon: head weights rescaled to std 1, output scaled by 1/width
            with torch.no_grad():
                self.head.weight.mul_(head_std / self.head.weight.std())
        self.scale = scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the whitening filters from a sample of normalised training images."""
        if self.use_whitening:
            self.whiten.weight.copy_(patch_whitening(images, self.whiten.kernel_size[0]))

    def set_stem_stride(self, stride: int | None) -> None:
        """Progressive resolution: run the stem at `stride` (None: the model's own), same weights.
        A 2x2 stem at stride 2 sees every pixel once, so the weights mean the same at both."""
        stride = self.stem_stride if stride is None else positive_int("stride", stride, most=MAX_STEM_STRIDE)
        self.whiten.stride = (stride, stride)

    def forward(self, x):
        return self.head(self.layers(self.whiten(x))) * self.scale


@register("fast")
def fast(**options) -> FastNet:
    return FastNet(**options)  # the constructor checks the options and takes a list for widths
