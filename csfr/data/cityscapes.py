"""Cityscapes (fine annotations, 19 evaluated classes)."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np

from csfr.data.base import IGNORE_INDEX, TRAIN_ID_SUFFIX, FileDataset, label_table, scan_pairs
from csfr.data.convert import Job, find_sources, remap_png, run_jobs

CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
           "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
           "bicycle")
PALETTE = np.array([[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
                    [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
                    [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
                    [0, 80, 100], [0, 0, 230], [119, 11, 32]], np.uint8)

# Official labelIds (cityscapesscripts/helpers/labels.py) -> trainId; ids without a train id -> 255.
# The license plate (id -1) is stored as 255 in the uint8 labelIds PNGs.
_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
              26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
ID_TO_TRAIN_ID = label_table({**{i: _TRAIN_IDS.get(i, IGNORE_INDEX) for i in range(34)}, 255: IGNORE_INDEX})

IMAGE_SUFFIX = "_leftImg8bit.png"
RAW_SUFFIX = "_gtFine_labelIds.png"
TRAIN_SUFFIX = "_gtFine" + TRAIN_ID_SUFFIX

LAYOUT = """\
root/
  leftImg8bit/{train,val,test}/<city>/<name>_leftImg8bit.png
  gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png   (or the official *_gtFine_labelIds.png;
                                                               `python -m csfr.data.prepare cityscapes`
                                                               writes the former from the latter)"""


class Cityscapes(FileDataset):
    """Cityscapes fine: train 2975 / val 500 / test 1525 images. Labels are read from
    *_labelTrainIds.png where present, else from the official *_labelIds.png through the
    official id -> trainId table. The test split has no public labels: its label is all 255."""

    name = "cityscapes"
    class_names = CLASSES
    palette = PALETTE
    splits = ("train", "val", "test")
    expected_counts = MappingProxyType({"train": 2975, "val": 500, "test": 1525})
    layout = LAYOUT
    raw_table = ID_TO_TRAIN_ID

    def find_samples(self) -> list[tuple[Path, Path | None]]:
        image_dir = self.split_path(self.find_root(".", marker="leftImg8bit") / "leftImg8bit" / self.split)
        if self.split == "test":
            return [(path, None) for path in sorted(image_dir.rglob(f"*{IMAGE_SUFFIX}"))]
        label_dir = self.split_path(self.root / "gtFine" / self.split)
        return scan_pairs(image_dir, IMAGE_SUFFIX, label_dir, (TRAIN_SUFFIX, RAW_SUFFIX))


def prepare(root: Path, workers: int) -> tuple[int, int]:
    """Write gtFine/*/*/*_gtFine_labelTrainIds.png next to every official *_gtFine_labelIds.png."""
    jobs = [Job(remap_png, (src, ID_TO_TRAIN_ID), src.with_name(src.name.replace(RAW_SUFFIX, TRAIN_SUFFIX)))
            for src in find_sources(Path(root, "gtFine"), RAW_SUFFIX)]
    return run_jobs(jobs, workers, "cityscapes labelIds -> labelTrainIds")
