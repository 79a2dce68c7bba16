"""PSPNet's pyramid pooling head: pooled context at bins 1, 2, 3, 6 concatenated with the input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csfr.models.layers import ConvBNReLU


class PSPHead(nn.Module):
    def __init__(self, in_ch: int, channels: int = 512, *, output_stride: int = 8, bins: tuple[int, ...] = (1, 2, 3, 6),
                 norm: str = "bn"):
        super().__init__()
        self.channels = channels
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_ch, channels, 1, norm=norm))
                                    for b in bins)
        self.fuse = ConvBNReLU(in_ch + channels * len(bins), channels, 3, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size, mode="bilinear", align_corners=False) for stage in self.stages]
        return self.fuse(torch.cat([x, *pooled], 1))
