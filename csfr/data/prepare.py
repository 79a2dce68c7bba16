"""python -m csfr.data.prepare {cityscapes,coco_stuff10k,coco_stuff164k,pascal_context} --root PATH

Converts official annotations into the label PNGs the datasets read. Idempotent (outputs that
exist are skipped, so an interrupted run is finished by running it again), atomic (each file is
written under a temporary name, then renamed), parallel (--workers processes), with a progress bar.
ADE20K and the synthetic scenes need no conversion; pascal_context59 and pascal_context60 share
the one pascal_context conversion.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from pathlib import Path

from csfr import cli
from csfr.data import cityscapes, coco_stuff, pascal_context

CONVERTERS = {"cityscapes": cityscapes.prepare, "coco_stuff10k": coco_stuff.prepare_10k,
              "coco_stuff164k": coco_stuff.prepare_164k, "pascal_context": pascal_context.prepare}
ALIASES = {"pascal_context": ["pascal_context59", "pascal_context60"]}
NOTHING_TO_DO = {
    "ade20k": "ADE20K needs no conversion: the dataset reads the official ADEChallengeData2016 release "
              "as it is (docs/data.md); point --data-root at it",
    "synthetic": "the synthetic scenes need no conversion: they are generated on the fly, nothing is on disk",
}
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)
ROOT_HELP = "dataset root as laid out in docs/data.md (what build_dataset gets); outputs go inside it"
WORKERS_HELP = f"worker processes; 1 = run in this process (default: min(8, CPUs) = {DEFAULT_WORKERS})"
JSON_HELP = "the Detail annotations trainval_merged.json (default: look in --root, then in VOC2010/)"
EPILOG = f"""\
flags (after DATASET; `python -m csfr.data.prepare DATASET --help` shows one converter's):
  --root PATH    {ROOT_HELP}
  --workers N    {WORKERS_HELP}
  --json PATH    pascal_context only: {JSON_HELP}
ade20k and synthetic need no conversion."""


def _workers(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csfr.data.prepare", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET", help="the converter to run:")
    for name, convert in CONVERTERS.items():
        what = " ".join(convert.__doc__.split())
        s = sub.add_parser(name, help=what, description=what, aliases=ALIASES.get(name, []))
        s.add_argument("--root", type=Path, required=True, metavar="PATH", help=ROOT_HELP)
        s.add_argument("--workers", type=_workers, default=DEFAULT_WORKERS, metavar="N", help=WORKERS_HELP)
        if name == "pascal_context":
            s.add_argument("--json", type=Path, default=None, metavar="PATH", help=JSON_HELP)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in NOTHING_TO_DO:
        print(f"{argv[0]}: {NOTHING_TO_DO[argv[0]]}")
        return
    args = parser().parse_args(argv)
    name = next((key for key, aliases in ALIASES.items() if args.dataset in aliases), args.dataset)
    convert = CONVERTERS[name]
    if name == "pascal_context":
        convert = partial(convert, json_path=args.json)
    written, skipped = convert(args.root, args.workers)
    print(f"{args.dataset}: wrote {written} files, skipped {skipped} already there")


if __name__ == "__main__":
    cli.run_main("csfr.data.prepare", main)  # bad input: one line and exit status 2
