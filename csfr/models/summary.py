"""python -m csfr.models.summary NAME: parameter counts of a model, by part.

Counts are of trainable parameters (BatchNorm running statistics are buffers and not counted).
The backbone line also gives the count with torchvision's 1000-class `fc` layer added (stage-4
channels x 1000 weights + 1000 biases: 2,049,000 at width 64), the figure torchvision quotes for
its ResNets (25,557,032 for ResNet-50, 44,549,160 for ResNet-101).
"""

from __future__ import annotations

import argparse

from torch import nn

from csfr.models.csfr import GATES
from csfr.models.registry import DEFAULTS, build, names

IMAGENET_CLASSES = 1000


def count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def rows(model: nn.Module) -> list[tuple[str, int]]:
    """(part, parameter count) lines, the total last."""
    backbone = count(model.backbone)
    fc = model.backbone.stage4_channels * IMAGENET_CLASSES + IMAGENET_CLASSES
    out = [("backbone", backbone), ("backbone + ImageNet fc (torchvision's count)", backbone + fc)]
    if model.is_csfr:
        out += [("head (baseline part)", count(model.head.head)), ("CSFLM", count(model.head.csflm)),
                ("AAM", count(model.head.aam)), ("AAM's stage-4 input (1x1 conv-BN-ReLU)", count(model.head.reduce)),
                ("CAC projection (training only)", count(model.head.cac.embed))]
    else:
        out.append(("head", count(model.head)))
    out += [("classifier", count(model.classifier)), ("auxiliary head", count(model.aux)),
            ("total", count(model))]
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csfr.models.summary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=names(), metavar="NAME", help="model name, e.g. csfr_r101_d8 (one of: "
                   + ", ".join(names()) + ")")
    p.add_argument("--num-classes", type=int, default=19, help="classes of the classifier (default 19)")
    p.add_argument("--width", type=int, default=DEFAULTS["width"], help="backbone base width (default 64)")
    p.add_argument("--head-channels", type=int, default=DEFAULTS["head_channels"],
                   help="channels of the head features X (default 512)")
    p.add_argument("--csfr-dim", type=int, default=DEFAULTS["csfr_dim"],
                   help="C-S feature channels D of a CSFR model (default 512)")
    p.add_argument("--csflm-convs", type=int, default=DEFAULTS["csflm_convs"],
                   help="conv-BN-ReLU layers of the CSFLM (default 2)")
    p.add_argument("--gate", choices=GATES, default=DEFAULTS["gate"],
                   help="AAM gate of a CSFR model: one per pixel and channel (default), per pixel, or per "
                        "channel (SE-style)")
    p.add_argument("--aux-weight", type=float, default=DEFAULTS["aux_weight"],
                   help="auxiliary head loss weight (default 0.4); 0 builds no auxiliary head")
    p.add_argument("--deep-stem", action="store_true", help="three 3x3 stem convolutions instead of the 7x7")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    try:
        model = build(args.name, args.num_classes, width=args.width, head_channels=args.head_channels,
                      csfr_dim=args.csfr_dim, csflm_convs=args.csflm_convs, gate=args.gate,
                      aux_weight=args.aux_weight, deep_stem=args.deep_stem)
    except (TypeError, ValueError) as e:
        p.error(str(e))  # one line and exit status 2, not a traceback
    table = rows(model)
    width = max(len(part) for part, _ in table)
    print(f"{args.name}, {args.num_classes} classes")
    for part, n in table:
        print(f"  {part:<{width}}  {n:>12,}")


if __name__ == "__main__":
    main()
