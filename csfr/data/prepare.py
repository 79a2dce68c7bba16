"""python -m csfr.data.prepare {cityscapes,coco_stuff10k,coco_stuff164k,pascal_context} --root PATH

Converts official annotations into the label PNGs the datasets read. Idempotent (outputs that
exist are skipped), atomic (temp name + rename), parallel (--workers processes).
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path

from csfr.data import cityscapes, coco_stuff, pascal_context

CONVERTERS = {"cityscapes": cityscapes.prepare, "coco_stuff10k": coco_stuff.prepare_10k,
              "coco_stuff164k": coco_stuff.prepare_164k, "pascal_context": pascal_context.prepare}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csfr.data.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name, convert in CONVERTERS.items():
        what = " ".join(convert.__doc__.split())
        s = sub.add_parser(name, help=what, description=what)
        s.add_argument("--root", type=Path, required=True,
                       help="dataset root, laid out as in docs/data.md (the folder the dataset is built on)")
        s.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                       help="worker processes (1 = run in this process; default: min(8, CPUs))")
        if name == "pascal_context":
            s.add_argument("--json", type=Path, default=None,
                           help="path of trainval_merged.json (default: look in --root, then in VOC2010/)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    convert = CONVERTERS[args.dataset]
    if args.dataset == "pascal_context":
        convert = partial(convert, json_path=args.json)
    written, skipped = convert(args.root, args.workers)
    print(f"{args.dataset}: wrote {written} files, skipped {skipped} already there")


if __name__ == "__main__":
    main()
