"""Model names and `build(name, num_classes, **options)`.

Names are `<head>_r<depth>_d<output stride>` for the baselines (fcn, deeplabv3, pspnet) and
`csfr_r<depth>_d<os>` (CSFR on FCN), `csfr_deeplabv3_...`, `csfr_pspnet_...` for CSFR on the
others; depth 50 or 101, output stride 8 or 16.
"""

from __future__ import annotations

import re

from csfr.models.csfr import CSFRHead
from csfr.models.heads import HEADS
from csfr.models.resnet import DEPTHS, ResNet
from csfr.models.segmentor import Segmentor
from csfr.models.weights import load_pretrained

_NAME = re.compile(r"^(?:(csfr)_)?(?:(fcn|deeplabv3|pspnet)_)?r(\d+)_d(8|16)$")

# Every option and its default. Options of a part a model does not have (the CSFR ones for a
# baseline) are accepted and unused, so that one config serves a CSFR model and its baseline.
DEFAULTS = {
    "pretrained": None,          # local backbone weights (torchvision or MMCV naming)
    "pretrained_strict": True,   # raise on missing / unexpected / mismatched tensors
    "deep_stem": False,          # three 3x3 convs instead of the 7x7 ("v1c")
    "multi_grid": None,          # stage-4 dilation multipliers, e.g. (1, 2, 4)
    "width": 64,                 # backbone base width (64 = the standard ResNet)
    "head_channels": 512,        # channels of the head features X
    "aux_weight": 0.4,           # auxiliary FCN loss weight on stage 3 (0 = no auxiliary head)
    "dropout": 0.1,
    "norm": "bn",                # "bn" or "syncbn"
    "ignore_index": 255,
    "backend": "auto",           # kernel backend of the csfr ops
    "csfr_dim": 512,             # channels D of the C-S features
    "csflm_convs": 2,
    "gate": "pixel_channel",     # AAM gate: "pixel_channel", "pixel" or "channel"
    "delta_v": 0.5,
    "delta_d": 1.5,
    "w_intra": 1.0,
    "w_inter": 1.0,
}


def names() -> list[str]:
    """Every valid model name."""
    out = []
    for depth in sorted(DEPTHS):
        for os_ in (8, 16):
            suffix = f"r{depth}_d{os_}"
            out += [f"{head}_{suffix}" for head in HEADS]
            out += [f"csfr_{suffix}", f"csfr_deeplabv3_{suffix}", f"csfr_pspnet_{suffix}"]
    return out


def parse(name: str) -> tuple[bool, str, int, int]:
    """(is CSFR, head name, depth, output stride) of a model name."""
    match = _NAME.match(name)
    if not match or name not in names():
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}")
    csfr, head, depth, os_ = match.groups()
    return bool(csfr), head or "fcn", int(depth), int(os_)


def build(name: str, num_classes: int, **options) -> Segmentor:
    """The model `name` for `num_classes` classes; see DEFAULTS for the options."""
    csfr, head_name, depth, output_stride = parse(name)
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown model option(s) {', '.join(unknown)}; valid: {', '.join(sorted(DEFAULTS))}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    o = {**DEFAULTS, **options}
    backbone = ResNet(depth, output_stride, o["deep_stem"], o["multi_grid"], o["width"], o["norm"])
    if o["pretrained"]:
        load_pretrained(backbone, o["pretrained"], strict=o["pretrained_strict"])
    head = HEADS[head_name](backbone.stage4_channels, o["head_channels"], output_stride=output_stride,
                            norm=o["norm"])
    if csfr:
        head = CSFRHead(head, num_classes, o["csfr_dim"], o["gate"], o["csflm_convs"], o["delta_v"], o["delta_d"],
                        o["w_intra"], o["w_inter"], o["ignore_index"], o["norm"], o["backend"])
    return Segmentor(backbone, head, num_classes, o["aux_weight"], o["dropout"], o["ignore_index"], o["norm"])
