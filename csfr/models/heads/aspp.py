"""DeepLabV3's ASPP head: parallel 1x1 and dilated 3x3 branches plus image pooling, fused by a 3x3 conv.

Dilation rates are (6, 12, 18) at output stride 16 and doubled, (12, 24, 36), at output stride 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csfr.models.layers import ConvBNReLU


class ASPPHead(nn.Module):
    def __init__(self, in_ch: int, channels: int = 512, *, output_stride: int = 8, norm: str = "bn"):
        super().__init__()
        rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        self.channels = channels
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_ch, channels, 1, norm=norm))
        self.branches = nn.ModuleList([ConvBNReLU(in_ch, channels, 1, norm=norm)] +
                                      [ConvBNReLU(in_ch, channels, 3, rate, norm=norm) for rate in rates])
        self.fuse = ConvBNReLU(channels * (len(rates) + 2), channels, 3, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.interpolate(self.pool(x), x.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([pooled] + [branch(x) for branch in self.branches], 1))
