"""FCN head: two 3x3 conv-BN-ReLU layers on the dilated backbone's output."""

from __future__ import annotations

from torch import nn

from csfr.models.layers import ConvBNReLU


class FCNHead(nn.Sequential):
    """`output_stride` is accepted so every head is built alike; FCN's convolutions do not depend on it."""

    def __init__(self, in_ch: int, channels: int = 512, *, num_convs: int = 2, output_stride: int = 8,
                 norm: str = "bn"):
        super().__init__(*(ConvBNReLU(in_ch if i == 0 else channels, channels, 3, norm=norm) for i in range(num_convs)))
        self.channels = channels
