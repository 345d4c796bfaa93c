"""The scratch detector: a small CNN on the normalised gray image [N, 1, 128, 128]."""

from __future__ import annotations

import torch
from torch import nn


class ZeroMeanConv2d(nn.Conv2d):
    """A convolution whose kernels are constrained to sum to zero (pure high-pass): the first
    layer then ignores the surface level, the lighting gradient and vignetting from the start
    and only sees local structure such as lines, edges and specks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return self._conv_forward(x, w, self.bias)


def _block(cin: int, cout: int, k: int = 3, stride: int = 1, zero_mean: bool = False) -> list[nn.Module]:
    conv = ZeroMeanConv2d if zero_mean else nn.Conv2d
    return [
        conv(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class ScratchNet(nn.Module):
    """Four conv layers, the first strided (128 -> 64) so that thin lines are still seen at full
    resolution by its 5x5 kernels, then two max-pools (64 -> 32 -> 16).  The head pools the last
    feature map both ways -- global max (a scratch is small and local) and global mean -- and a
    linear layer gives one logit.
    """

    def __init__(self, widths: tuple[int, int, int, int] = (16, 16, 32, 64)) -> None:
        super().__init__()
        c1, c2, c3, c4 = widths
        self.features = nn.Sequential(
            *_block(1, c1, k=5, stride=2, zero_mean=True),  # 64x64
            *_block(c1, c2),
            nn.MaxPool2d(2),  # 32x32
            *_block(c2, c3),
            nn.MaxPool2d(2),  # 16x16
            *_block(c3, c4),
        )
        self.head = nn.Linear(2 * c4, 1)
        self.widths = widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, 1]."""
        f = self.features(x)
        pooled = torch.cat([torch.amax(f, dim=(2, 3)), torch.mean(f, dim=(2, 3))], dim=1)
        return self.head(pooled)


class WithSigmoid(nn.Module):
    """The exported graph: input ``image`` [N, 1, 128, 128] -> ``defect_probability`` [N, 1]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
