"""Building blocks shared by the backbone and the heads."""

from __future__ import annotations

from torch import nn

NORMS = {"bn": nn.BatchNorm2d, "syncbn": nn.SyncBatchNorm}


def norm_layer(name: str) -> type[nn.Module]:
    """The normalisation class for `name` ("bn", or "syncbn" for multi-GPU training)."""
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; valid: {', '.join(NORMS)}")
    return NORMS[name]


class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> norm -> ReLU; `padding` keeps the size for odd kernels at any dilation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, dilation: int = 1, norm: str = "bn"):
        super().__init__(nn.Conv2d(in_ch, out_ch, kernel, padding=dilation * (kernel // 2), dilation=dilation,
                                   bias=False),
                         norm_layer(norm)(out_ch), nn.ReLU(inplace=True))


class Classifier(nn.Sequential):
    """Dropout + 1x1 convolution to class logits."""

    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.1):
        super().__init__(nn.Dropout2d(dropout), nn.Conv2d(in_ch, num_classes, 1))
