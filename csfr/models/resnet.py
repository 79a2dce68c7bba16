"""Dilated ResNet-50/101 backbones returning stage-3 and stage-4 features.

Output stride 8 removes the stride of stages 3 and 4 and dilates them by 2 and 4; output stride
16 does so for stage 4 only (dilation 2). Every block of a dilated stage uses the stage's
dilation (MMSegmentation's convention; torchvision gives the first block the previous stage's).
Multi-grid multiplies stage 4's dilation per block ((1, 2, 4) at OS8 gives 4, 8, 16). The deep
"v1c" stem replaces the 7x7 convolution with three 3x3 ones, w/2, w/2 and w wide for base width
w (MMSegmentation's ResNetV1c). Module names follow torchvision (conv1/bn1/layerN.M.convK/bnK/
downsample.{0,1}) and, for the deep stem, MMCV (stem.{0,1,3,4,6,7}), so both load by name.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from csfr.models.layers import norm_layer

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
EXPANSION = 4


def check_options(depth: int, output_stride: int, width: int, deep_stem: bool,
                  multi_grid: Sequence[int] | None) -> None:
    """Raise naming the first invalid backbone option."""
    if depth not in DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth!r}")
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
    if not isinstance(width, int) or isinstance(width, bool):
        raise TypeError(f"width must be an integer, got {width!r}")
    if width < (2 if deep_stem else 1):
        raise ValueError(f"width must be >= {2 if deep_stem else 1}{' with deep_stem' if deep_stem else ''}, "
                         f"got {width}")
    blocks = DEPTHS[depth][3]
    if multi_grid is not None and not (
            isinstance(multi_grid, Sequence) and not isinstance(multi_grid, str) and len(multi_grid) == blocks
            and all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in multi_grid)):
        raise ValueError(f"multi_grid must be {blocks} positive integers (one per stage-4 block), e.g. (1, 2, 4); "
                         f"got {multi_grid!r}")


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 with a residual; the stride sits on the 3x3 (ResNet v1.5)."""

    def __init__(self, in_ch: int, width: int, stride: int, dilation: int, norm: type[nn.Module]):
        super().__init__()
        out_ch = width * EXPANSION
        self.conv1, self.bn1 = nn.Conv2d(in_ch, width, 1, bias=False), norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out_ch, 1, bias=False), norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), norm(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """ResNet-`depth` trunk; forward returns (stage-3 features, stage-4 features)."""

    def __init__(self, depth: int = 101, output_stride: int = 8, deep_stem: bool = False,
                 multi_grid: Sequence[int] | None = None, width: int = 64, norm: str = "bn"):
        super().__init__()
        check_options(depth, output_stride, width, deep_stem, multi_grid)
        norm_cls = norm_layer(norm)
        self.depth, self.output_stride, self.deep_stem, self.width = depth, output_stride, deep_stem, width
        if deep_stem:
            half = width // 2
            self.stem = nn.Sequential(
                nn.Conv2d(3, half, 3, 2, 1, bias=False), norm_cls(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, half, 3, 1, 1, bias=False), norm_cls(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, width, 3, 1, 1, bias=False), norm_cls(width), nn.ReLU(inplace=True))
        else:
            self.conv1, self.bn1 = nn.Conv2d(3, width, 7, 2, 3, bias=False), norm_cls(width)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        strides, dilations = ((1, 2, 1, 1), (1, 1, 2, 4)) if output_stride == 8 else ((1, 2, 2, 1), (1, 1, 1, 2))
        in_ch = width
        for stage, (blocks, stride, dilation) in enumerate(zip(DEPTHS[depth], strides, dilations), start=1):
            grid = tuple(multi_grid) if stage == 4 and multi_grid else (1,) * blocks
            layer = []
            for i in range(blocks):
                layer.append(Bottleneck(in_ch, width * 2 ** (stage - 1), stride if i == 0 else 1,
                                        dilation * grid[i], norm_cls))
                in_ch = width * 2 ** (stage - 1) * EXPANSION
            self.add_module(f"layer{stage}", nn.Sequential(*layer))
        self.stage3_channels, self.stage4_channels = width * 4 * EXPANSION, width * 8 * EXPANSION

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(x) if self.deep_stem else self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(self.maxpool(x)))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)
