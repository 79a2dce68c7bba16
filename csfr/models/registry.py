"""Model names and `build(name, num_classes, **options)`.

Names are `<head>_r<depth>_d<output stride>` for the baselines (fcn, deeplabv3, pspnet) and
`csfr_r<depth>_d<os>` (CSFR on FCN), `csfr_deeplabv3_...`, `csfr_pspnet_...` for CSFR on the
others; depth 50 or 101, output stride 8 or 16.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

from csfr.losses import check_centroids
from csfr.models.csfr import CSFRHead, check_aam_input, check_gate, check_normalize
from csfr.models.heads import HEADS
from csfr.models.layers import norm_layer
from csfr.models.resnet import DEPTHS, ResNet
from csfr.models.segmentor import Segmentor
from csfr.models.weights import check_file, load_pretrained
from csfr.ops.dispatch import NAMES as BACKENDS
from csfr.ops.layout import IGNORE_INDEX

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
    "ignore_index": IGNORE_INDEX,
    "backend": "auto",           # kernel backend of the csfr ops
    "csfr_dim": 512,             # channels D of the C-S features
    "csflm_convs": 2,
    "gate": "pixel_channel",     # AAM gate: "pixel_channel", "pixel", "channel" or "fixed" (no learned gate)
    "aam_fuses": "backbone",     # AAM fuses S with stage 4 ("backbone", the abstract's) or the head features X ("head")
    "cac_projection": 0,         # CAC on S (0) or on a 1x1 linear projection of S to this many channels
    "cac_normalize": "pixel",    # CAC on per-pixel unit vectors ("pixel"), S / each image's RMS norm ("image") or S ("none")
    "cac_centroids": "image",    # class centroids per image ("image") or over the whole batch ("batch")
    "delta_v": 0.1,              # margins on the normalised scale (0.5 / 1.5 suit "none" at small D)
    "delta_d": 0.5,
    "w_intra": 0.02,
    "w_inter": 0.02,
}
# The CSFR defaults above are the presets' (csfr/configs/base.json, which says where each comes
# from); tests/test_models.py holds them equal.

# the options only CSFR's parts use (its head and the CAC loss's kernels)
CSFR_OPTIONS = ("backend", "csfr_dim", "csflm_convs", "gate", "aam_fuses", "cac_projection", "cac_normalize",
                "cac_centroids", "delta_v", "delta_d", "w_intra", "w_inter")

# (name prefix, is CSFR, head): the baselines, then CSFR on each ("csfr_" alone is CSFR on FCN)
_FAMILIES = [(f"{h}_", False, h) for h in HEADS] + [
    ("csfr_" if h == "fcn" else f"csfr_{h}_", True, h) for h in HEADS]
# name -> (is CSFR, head, depth, output stride)
_SPECS = {f"{prefix}r{depth}_d{os_}": (csfr, head, depth, os_)
          for depth in sorted(DEPTHS) for os_ in (8, 16) for prefix, csfr, head in _FAMILIES}


def names() -> list[str]:
    """Every valid model name."""
    return list(_SPECS)


def parse(name: str) -> tuple[bool, str, int, int]:
    """(is CSFR, head name, depth, output stride) of a model name."""
    if name not in _SPECS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(names())}")
    return _SPECS[name]


def used_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options model `name` uses: all of them for CSFR, those besides CSFR_OPTIONS for a baseline.
    Two configs of one model with equal used options train the same network."""
    if parse(name)[0]:
        return dict(options)
    return {k: v for k, v in options.items() if k not in CSFR_OPTIONS}


def _check_number(key: str, value: Any, low: float | None = None, integer: bool = False,
                  below: float | None = None) -> None:
    """TypeError unless `value` is a number (an int if `integer`); ValueError outside [low, below)."""
    kind = "an integer" if integer else "a number"
    if not isinstance(value, int if integer else Real) or isinstance(value, bool):
        raise TypeError(f"option {key} must be {kind}, got {value!r}")
    if (low is not None and value < low) or (below is not None and value >= below):
        bound = " and ".join(f"{op} {v}" for op, v in ((">=", low), ("<", below)) if v is not None)
        raise ValueError(f"option {key} must be {bound}, got {value!r}")


def _check_options(o: dict[str, Any]) -> None:
    """Raise naming the first invalid head, loss or weight option (the backbone checks its own)."""
    for key in ("head_channels", "csfr_dim", "csflm_convs"):
        _check_number(key, o[key], 1, integer=True)
    _check_number("cac_projection", o["cac_projection"], 0, integer=True)
    check_normalize(o["cac_normalize"])
    check_centroids(o["cac_centroids"])
    check_aam_input(o["aam_fuses"])
    for key in ("aux_weight", "delta_v", "delta_d", "w_intra", "w_inter"):
        _check_number(key, o[key], 0)
    _check_number("dropout", o["dropout"], 0, below=1)
    _check_number("ignore_index", o["ignore_index"], integer=True)
    norm_layer(o["norm"])
    check_gate(o["gate"])
    if o["backend"] not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {o['backend']!r}; valid: auto, {', '.join(BACKENDS)}")
    if o["pretrained"]:
        check_file(o["pretrained"])


def build(name: str, num_classes: int, **options: Any) -> Segmentor:
    """The segmentation network `name` for `num_classes` classes.

    Args:
        name: `<head>_r<depth>_d<os>` (fcn, deeplabv3, pspnet; depth 50 or 101; output stride 8
            or 16) or its CSFR form, `csfr_r101_d8`, `csfr_deeplabv3_r50_d16`, ... (`names()`).
        num_classes: K >= 1.
        **options: any of DEFAULTS (docs/models.md); the CSFR defaults are the presets'. Unknown
            keys raise TypeError; the name and every option are checked before anything is built.

    Returns:
        A Segmentor: `model(images [B, 3, H, W])` gives logits [B, K, H, W]; in training mode with
        labels [B, H, W], {"logits", "losses"}. `model.pretrained_report` holds the weight loading
        report (None without `pretrained`).
    """
    csfr, head_name, depth, output_stride = parse(name)
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown model option(s) {', '.join(unknown)}; valid: {', '.join(sorted(DEFAULTS))}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    o = {**DEFAULTS, **options}
    _check_options(o)
    backbone = ResNet(depth, output_stride, o["deep_stem"], o["multi_grid"], o["width"], o["norm"])
    report = None
    if o["pretrained"]:
        report = load_pretrained(backbone, o["pretrained"], strict=o["pretrained_strict"])
    head = HEADS[head_name](backbone.stage4_channels, o["head_channels"], output_stride=output_stride,
                            norm=o["norm"])
    if csfr:
        head = CSFRHead(head, num_classes, dim=o["csfr_dim"], gate=o["gate"], csflm_convs=o["csflm_convs"],
                        delta_v=o["delta_v"], delta_d=o["delta_d"], w_intra=o["w_intra"], w_inter=o["w_inter"],
                        ignore_index=o["ignore_index"], norm=o["norm"], backend=o["backend"],
                        aam_fuses=o["aam_fuses"], in_ch=backbone.stage4_channels,
                        cac_projection=o["cac_projection"], cac_normalize=o["cac_normalize"],
                        cac_centroids=o["cac_centroids"])
    model = Segmentor(backbone, head, num_classes, o["aux_weight"], o["dropout"], o["ignore_index"], o["norm"])
    model.pretrained_report = report
    return model
