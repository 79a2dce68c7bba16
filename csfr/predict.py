"""python -m csfr.predict: segment one's own images with a trained checkpoint.

    python -m csfr.predict --checkpoint runs/demo/checkpoints/best.pt photos/ street.png --out preds
    python -m csfr.predict --checkpoint best.pt leftImg8bit/val --out preds --scales 0.75 1.0 1.25 --flip

Writes, per image, under --out: pred/NAME.png (a palette PNG: pixel values are class ids, viewers
show the class colours), overlay/NAME.png (the colours over the image) and panel/NAME.png (input |
prediction with a legend of the classes found). NAME is the image's path relative to the folder it
was found in, without its extension. The preprocessing, class names and palette come from the
checkpoint: no dataset is needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from csfr import api, cli
from csfr.data.base import read_image
from csfr.engine.evaluator import PredictionWriter

IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csfr.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER",
                   help="image files, or folders searched recursively for images (any format Pillow reads: "
                        ".png, .jpg, ...)")
    p.add_argument("--checkpoint", required=True, type=Path, metavar="PATH",
                   help="a checkpoint written by csfr.train (best.pt or iter_*.pt)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output folder for pred/, overlay/ and panel/ (created if missing)")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="where to run the network (default auto: a GPU when torch sees one)")
    p.add_argument("--scales", type=float, nargs="+", default=None, metavar="S",
                   help="test scales, e.g. 0.75 1.0 1.25: the probabilities at each are averaged "
                        "(default: the checkpoint config's eval.scales)")
    p.add_argument("--flip", action="store_true",
                   help="also average the horizontally flipped image (default: the config's eval.flip)")
    p.add_argument("--mode", choices=("whole", "slide"), default=None,
                   help="whole-image or sliding-window inference (default: the config's eval.mode)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def find_images(inputs: list[Path]) -> list[tuple[Path, str]]:
    """(path, output name) of every image in `inputs`; raises before any work on a missing path,
    a file Pillow cannot open, a folder without images, or two images that would share a name."""
    found: list[tuple[Path, str]] = []
    for item in inputs:
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                           and not p.name.startswith("."))
            if not files:
                raise ValueError(f"folder {item} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES)[:8])}, "
                                 "... recursively)")
            found += [(p, p.relative_to(item).with_suffix("").as_posix()) for p in files]
        elif item.is_file():
            found.append((item, item.stem))
        else:
            raise FileNotFoundError(f"input {item} does not exist")
    for path, _ in found:  # every file, folders' too, before any work
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as e:  # Pillow raises several types for a file that is not an image
            raise ValueError(f"{path} is not an image Pillow can read ({type(e).__name__}: {e})") from e
    names: dict[str, Path] = {}
    for path, name in found:
        if name in names and names[name] != path:
            raise ValueError(f"{names[name]} and {path} would both be written as {name}.png; "
                             "predict them into different --out folders")
        names[name] = path
    return found


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    images = find_images(args.inputs)
    predictor = api.load(args.checkpoint, args.device, scales=args.scales, flip=args.flip or None, mode=args.mode)
    writer = PredictionWriter(args.out, predictor.palette, class_names=predictor.class_names,
                              ignore_index=predictor.ignore_index)
    for path, name in tqdm(images, desc="predict", unit="image", disable=args.no_progress, dynamic_ncols=True):
        image = read_image(path, orient=True)  # EXIF orientation applied: photos from phones
        writer(predictor.predict(image), image, {"name": name})
    ev = predictor.eval_cfg
    print(f"{len(images)} image(s), {ev['mode']} inference, scales {ev['scales']}{' + flip' if ev['flip'] else ''}: "
          f"{args.out}/pred (class ids), overlay, panel")
    return 0


def entry() -> None:
    """The console script (and python -m): bad input ends with one line and exit status 2."""
    cli.run_main("csfr.predict", main)


if __name__ == "__main__":
    entry()
