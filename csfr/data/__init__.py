"""Datasets, transforms and batching: `build_dataset(name, root, split, transform=None)`.

Items are {"image": HxWx3 uint8, "label": HxW int64 train ids (255 = ignore), "meta": dict}, or with
a transform, `transform(image, label, rng)` merged into that dict (see csfr.data.base).
"""

from __future__ import annotations

from csfr.data.ade20k import ADE20K
from csfr.data.base import DatasetCountWarning, SegmentationDataset
from csfr.data.cityscapes import Cityscapes
from csfr.data.coco_stuff import COCOStuff10k, COCOStuff164k
from csfr.data.collate import collate
from csfr.data.pascal_context import PascalContext59, PascalContext60
from csfr.data.synthetic import SyntheticScenes
from csfr.data.transforms import test_pipeline, train_pipeline

DATASETS = {cls.name: cls for cls in (Cityscapes, ADE20K, COCOStuff10k, COCOStuff164k, PascalContext59,
                                      PascalContext60, SyntheticScenes)}


def names() -> list[str]:
    """The dataset names build_dataset accepts."""
    return sorted(DATASETS)


def build_dataset(name: str, root, split: str, transform=None, **kwargs) -> SegmentationDataset:
    """The `split` of dataset `name` under `root` (ignored by "synthetic"); kwargs go to its class
    (e.g. seed, or num_classes / size / length for synthetic)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(names())}")
    return DATASETS[name](root=root, split=split, transform=transform, **kwargs)


__all__ = [
    "ADE20K",
    "DATASETS",
    "COCOStuff10k",
    "COCOStuff164k",
    "Cityscapes",
    "DatasetCountWarning",
    "PascalContext59",
    "PascalContext60",
    "SegmentationDataset",
    "SyntheticScenes",
    "build_dataset",
    "collate",
    "names",
    "test_pipeline",
    "train_pipeline",
]
