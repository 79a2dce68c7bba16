"""python -m csfr.train: train a segmentation model from a preset.

With no arguments it trains CSFR on the built-in synthetic scenes on the CPU (a few minutes) and
prints the evaluation table. For several processes or machines, launch it with torchrun:

    torchrun --nproc_per_node 8 -m csfr.train --config cityscapes --data-root data/cityscapes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from csfr import cli
from csfr.engine import distributed
from csfr.engine.metrics import table
from csfr.engine.precision import AMP_MODES
from csfr.engine.trainer import NonFiniteLoss, StopRequested, Trainer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csfr.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_flags(p, default="synthetic")
    p.add_argument("--work-dir", type=Path, default=None, metavar="PATH",
                   help="run folder: config.json, checkpoints/, log.jsonl, tensorboard/, metrics.json, "
                        "predictions/ (default: runs/<config name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue a run exactly where a checkpoint left it; without a path, the newest "
                        "checkpoint in --work-dir")
    p.add_argument("--pretrained", default=None, metavar="PATH",
                   help="ImageNet backbone weights, a local torchvision or MMCV-style ResNet file "
                        "(sets model.pretrained; nothing is downloaded)")
    p.add_argument("--amp", choices=AMP_MODES, default=None,
                   help="mixed precision (sets train.amp; float16 adds a gradient scaler)")
    p.add_argument("--check-data", action="store_true",
                   help="read every training and validation file once before training and list every one "
                        "that cannot be read (takes as long as reading an epoch); without it a bad file "
                        "stops the run when it is first sampled")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars: each log_interval prints a line with the losses and the lr instead")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = cli.resolve(args)
    if args.pretrained is not None:
        config["model"]["pretrained"] = args.pretrained
    if args.amp is not None:
        config["train"]["amp"] = args.amp
    if args.print_config:
        print(json.dumps(config, indent=2))
        return 0
    name = Path(args.config).stem if args.config.endswith(".json") else args.config
    work_dir = args.work_dir or Path("runs") / name
    trainer = Trainer(config, work_dir, resume=args.resume, progress=not args.no_progress)
    if args.check_data and trainer.ctx.is_main:
        problems = [p for ds in (trainer.train_set, trainer.val_set) for p in ds.check(not args.no_progress)]
        if problems:
            raise ValueError(f"{len(problems)} file(s) cannot be read; nothing was trained:\n  " + "\n  ".join(problems))
        print(f"checked {len(trainer.train_set)} training and {len(trainer.val_set)} validation items: all readable")
    try:
        result = trainer.run()
    except NonFiniteLoss as e:
        print(f"csfr.train: {e}", file=sys.stderr)
        return 3
    except StopRequested as e:
        print(f"csfr.train: {e}", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    if trainer.ctx.is_main:
        print(f"\n{trainer.val_set.name} {trainer.val_set.split} after {result['iteration']} iterations:")
        print(table(result["scores"]))
        print(f"best mIoU {result['best']['mIoU'] if result['best'] else None}; run folder: {work_dir}")
    return 0


def entry() -> None:
    """The console script (and python -m): bad input ends with one line and exit status 2."""
    cli.run_main("csfr.train", main)


if __name__ == "__main__":
    entry()
