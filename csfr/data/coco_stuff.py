"""COCO-Stuff, 171 classes: the 164k release (COCO 2017 images) and the 10k release (9000/1000)."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np

from csfr.data.base import (
    IGNORE_INDEX,
    TRAIN_ID_SUFFIX,
    FileDataset,
    apply_table,
    label_table,
    listed_pairs,
    scan_pairs,
)
from csfr.data.convert import Job, find_sources, remap_png, run_jobs

CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge",
    "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile",
    "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff",
    "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad",
    "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper",
    "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other",
    "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood",
)

# 0-based ids of the 182-entry COCO-Stuff list that no annotation uses (street sign, hat, shoe,
# eye glasses, plate, mirror, window, desk, door, blender, hair brush).
UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
_USED_IDS = [i for i in range(182) if i not in UNUSED_IDS]
# 164k PNGs: 0-based ids, 255 = unlabelled. 10k .mat `S`: 1-based ids, 0 = unlabelled.
RAW_TO_TRAIN_ID = label_table({**{raw: k for k, raw in enumerate(_USED_IDS)}, 255: IGNORE_INDEX})
MAT_TO_TRAIN_ID = label_table({0: IGNORE_INDEX, **{raw + 1: k for k, raw in enumerate(_USED_IDS)}})

LAYOUT_164K = """\
root/
  images/{train2017,val2017}/*.jpg
  annotations/{train2017,val2017}/*.png                  (raw 0-based ids 0..181, 255 = unlabelled)
  annotations/{train2017,val2017}/*_labelTrainIds.png    (optional, preferred: train ids 0..170;
                                                          `python -m csfr.data.prepare coco_stuff164k`)"""

LAYOUT_10K = """\
root/                     (cocostuff-10k-v1.1)
  imageLists/{train,test}.txt
  images/<name>.jpg
  annotations/<name>.mat                 (official: key S, 1-based ids, 0 = unlabelled)
  annotations/<name>_labelTrainIds.png   (read by the dataset; `python -m csfr.data.prepare coco_stuff10k`)"""


class COCOStuff164k(FileDataset):
    """COCO-Stuff 164k: train2017 118287 / val2017 5000 images."""

    name = "coco_stuff164k"
    class_names = CLASSES
    splits = ("train", "val")
    expected_counts = MappingProxyType({"train": 118287, "val": 5000})
    layout = LAYOUT_164K
    raw_table = RAW_TO_TRAIN_ID

    def find_samples(self) -> list[tuple[Path, Path | None]]:
        folder = f"{self.split}2017"
        return scan_pairs(self.split_path(self.find_root(".", marker="images") / "images" / folder), ".jpg",
                          self.split_path(self.root / "annotations" / folder), (TRAIN_ID_SUFFIX, ".png"))


class COCOStuff10k(FileDataset):
    """COCO-Stuff 10k: train 9000 / test 1000 images by the official image lists; reads the
    *_labelTrainIds.png that `prepare coco_stuff10k` writes from the official .mat files."""

    name = "coco_stuff10k"
    class_names = CLASSES
    splits = ("train", "test")
    expected_counts = MappingProxyType({"train": 9000, "test": 1000})
    layout = LAYOUT_10K

    def find_samples(self) -> list[tuple[Path, Path | None]]:
        annotations = self.split_path(self.root / "annotations")
        if not any(annotations.glob(f"*{TRAIN_ID_SUFFIX}")):
            raise FileNotFoundError(f"coco_stuff10k: no *{TRAIN_ID_SUFFIX} under {annotations}; convert the "
                                    f"official .mat files first: python -m csfr.data.prepare coco_stuff10k "
                                    f"--root {self.root}")
        return listed_pairs(self.split_path(self.root / "imageLists" / f"{self.split}.txt"),
                            self.split_path(self.root / "images"), ".jpg", annotations, TRAIN_ID_SUFFIX)


def mat_to_train_ids(src: Path) -> np.ndarray:
    """The `S` map of an official COCO-Stuff 10k .mat annotation in uint8 train ids."""
    from scipy.io import loadmat  # scipy is needed by this converter only
    from scipy.io.matlab import MatReadError

    try:
        raw = loadmat(src)["S"]
    except (OSError, ValueError, KeyError, MatReadError) as e:
        raise ValueError(f"cannot read the label map S from {src}: {e!r}") from e
    return apply_table(raw, MAT_TO_TRAIN_ID, src).astype(np.uint8)


def prepare_164k(root: Path, workers: int) -> tuple[int, int]:
    """Write annotations/*/*_labelTrainIds.png next to every raw annotation PNG."""
    jobs = [Job(remap_png, (src, RAW_TO_TRAIN_ID), src.with_name(f"{src.stem}{TRAIN_ID_SUFFIX}"))
            for src in find_sources(Path(root, "annotations"), ".png", exclude=TRAIN_ID_SUFFIX)]
    return run_jobs(jobs, workers, "coco_stuff164k ids -> labelTrainIds")


def prepare_10k(root: Path, workers: int) -> tuple[int, int]:
    """Write annotations/<name>_labelTrainIds.png from every official annotations/<name>.mat."""
    jobs = [Job(mat_to_train_ids, (src,), src.with_name(f"{src.stem}{TRAIN_ID_SUFFIX}"))
            for src in find_sources(Path(root, "annotations"), ".mat")]
    return run_jobs(jobs, workers, "coco_stuff10k .mat -> labelTrainIds")
