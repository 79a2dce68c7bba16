"""ADE20K (SceneParsing challenge 2016, 150 classes)."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from csfr.data.base import IGNORE_INDEX, FileDataset, label_table, scan_pairs

CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# Annotation PNGs hold 0 = "other" (not evaluated) and 1..150; train id = value - 1.
RAW_TO_TRAIN_ID = label_table({0: IGNORE_INDEX, **{k: k - 1 for k in range(1, len(CLASSES) + 1)}})

LAYOUT = """\
root/                        (the folder holding ADEChallengeData2016, or that folder itself)
  ADEChallengeData2016/
    images/{training,validation}/ADE_*.jpg
    annotations/{training,validation}/ADE_*.png   (0 = other -> 255, k -> k-1)"""


class ADE20K(FileDataset):
    """ADE20K SceneParsing: train 20210 / val 2000 images."""

    name = "ade20k"
    class_names = CLASSES
    splits = ("train", "val")
    expected_counts = MappingProxyType({"train": 20210, "val": 2000})
    layout = LAYOUT
    raw_table = RAW_TO_TRAIN_ID

    def find_samples(self) -> list[tuple[Path, Path | None]]:
        base = self.find_root("ADEChallengeData2016", ".", marker="images")
        folder = {"train": "training", "val": "validation"}[self.split]
        return scan_pairs(self.split_path(base / "images" / folder), ".jpg",
                          self.split_path(base / "annotations" / folder), (".png",))
