"""PASCAL Context on VOC2010: 59 classes (background ignored) or 60 (background = class 0)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from types import MappingProxyType

import numpy as np

from csfr.data.base import IGNORE_INDEX, FileDataset, identity_table, label_table, listed_pairs, locate
from csfr.data.convert import Job, run_jobs
from csfr.data.masks import segmentation_mask

CLASSES59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor",
    "wall", "water", "window", "wood",
)
# Detail (trainval_merged.json, labels.txt) category ids of CLASSES59, in the same order.
DETAIL_IDS = (2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115,
              144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347,
              349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458)
NUM_DETAIL_CATEGORIES = 459
ROOTS = ("VOCdevkit/VOC2010", "VOC2010", ".")
LABEL_DIR = "SegmentationClassContext"
LIST_DIR = "ImageSets/SegmentationContext"

LAYOUT = """\
root/                      (the folder holding VOCdevkit, VOCdevkit itself, or VOC2010 itself)
  VOCdevkit/VOC2010/
    JPEGImages/<id>.jpg
    SegmentationClassContext/<id>.png        (0 = background, 1..59; written from trainval_merged.json
                                              by `python -m csfr.data.prepare pascal_context`)
    ImageSets/SegmentationContext/{train,val}.txt"""


class PascalContext59(FileDataset):
    """PASCAL Context, 59 classes: background -> 255, class k -> k-1. train 4996 / val 5104 images
    (the splits of trainval_merged.json; the 2014 paper counted 4998 / 5105)."""

    name = "pascal_context59"
    class_names = CLASSES59
    splits = ("train", "val")
    expected_counts = MappingProxyType({"train": 4996, "val": 5104})
    layout = LAYOUT
    raw_table = label_table({0: IGNORE_INDEX, **{k: k - 1 for k in range(1, 60)}, IGNORE_INDEX: IGNORE_INDEX})

    def find_samples(self) -> list[tuple[Path, Path | None]]:
        base = self.find_root(*ROOTS, marker="JPEGImages")
        return listed_pairs(self.split_path(base / LIST_DIR / f"{self.split}.txt"), base / "JPEGImages", ".jpg",
                            self.split_path(base / LABEL_DIR), ".png")


class PascalContext60(PascalContext59):
    """PASCAL Context, 60 classes: background kept as class 0, the others 1..59."""

    name = "pascal_context60"
    class_names = ("background", *CLASSES59)
    raw_table = identity_table(60)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def category_values(categories: list[dict]) -> dict[int, int]:
    """Detail category_id (1..459) -> 1..59 for the standard classes, 0 (background) for all others.

    The standard classes are fixed by their Detail ids (DETAIL_IDS); the file's names for those ids
    must match the class names, so a different numbering is refused rather than mislabelled."""
    names = {}
    for cat in categories:
        cid = cat["category_id"]
        if not 1 <= cid <= NUM_DETAIL_CATEGORIES:
            raise ValueError(f"category_id {cid} ({cat.get('name')!r}) is outside 1..{NUM_DETAIL_CATEGORIES}")
        names[cid] = cat.get("name", "")
    wrong = [f"{cid} is {repr(names[cid]) if cid in names else 'missing'}, expected {name!r}"
             for cid, name in zip(DETAIL_IDS, CLASSES59) if _key(names.get(cid, "")) != _key(name)]
    if wrong:
        raise ValueError("the 59 standard classes are not numbered as in the official release: category "
                         + "; ".join(wrong))
    standard = {cid: k for k, cid in enumerate(DETAIL_IDS, start=1)}
    return {cid: standard.get(cid, 0) for cid in names}


def render_mask(height: int, width: int, annotations: list[tuple[int, dict | list]]) -> np.ndarray:
    """uint8 label map: each (value, segmentation) painted in order over background 0."""
    mask = np.zeros((height, width), np.uint8)
    for value, segmentation in annotations:
        mask[segmentation_mask(segmentation, height, width)] = value
    return mask


def _write_list(path: Path, names: list[str]) -> None:
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(f"{n}\n" for n in names))
        tmp.replace(path)


def read_detail(path: Path) -> tuple[list[dict], dict[int, list]]:
    """(images, image_id -> [(label value, segmentation)] in file order) of a Detail annotation file;
    anything malformed raises naming the file."""
    try:
        detail = json.loads(Path(path).read_text())
        values = category_values(detail["categories"])
        per_image = defaultdict(list)
        for ann in detail["annos_segmentation"]:
            if ann["category_id"] not in values:
                raise ValueError(f"annotation {ann.get('id')} of image {ann['image_id']} has category_id "
                                 f"{ann['category_id']}, which is not in its categories")
            per_image[ann["image_id"]].append((values[ann["category_id"]], ann["segmentation"]))
        images = [{"phase": img.get("phase"), **{k: img[k] for k in ("image_id", "file_name", "height", "width")}}
                  for img in detail["images"]]
    except KeyError as e:
        raise ValueError(f"{path}: missing field {e} (expected the Detail trainval_merged.json)") from e
    except (ValueError, TypeError) as e:  # ValueError includes json.JSONDecodeError
        raise ValueError(f"{path}: {e}") from e
    return images, per_image


def prepare(root: Path, workers: int, json_path: Path | None = None) -> tuple[int, int]:
    """Write SegmentationClassContext/<id>.png (0 = background, 1..59) for every image of the Detail
    annotations trainval_merged.json (459 categories; the other 400 become background), and the
    split lists ImageSets/SegmentationContext/{train,val}.txt from the images' "phase" if missing."""
    base = locate(Path(root), ROOTS, "JPEGImages", "pascal_context", LAYOUT)
    candidates = [Path(json_path)] if json_path else [Path(root) / "trainval_merged.json", base / "trainval_merged.json"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"pascal_context: annotation file not found (tried {', '.join(map(str, candidates))}); "
                                f"pass --json PATH")
    images, per_image = read_detail(found)
    (base / LABEL_DIR).mkdir(exist_ok=True)
    (base / LIST_DIR).mkdir(parents=True, exist_ok=True)
    for phase in ("train", "val"):
        names = [Path(img["file_name"]).stem for img in images if img.get("phase") == phase]
        if names:
            _write_list(base / LIST_DIR / f"{phase}.txt", names)
    jobs = [Job(render_mask, (img["height"], img["width"], per_image[img["image_id"]]),
                base / LABEL_DIR / f"{Path(img['file_name']).stem}.png") for img in images]
    return run_jobs(jobs, workers, "pascal_context json -> SegmentationClassContext")
