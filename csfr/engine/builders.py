"""The datasets and the model a config describes."""

from __future__ import annotations

from torch import nn

from csfr import models
from csfr.configs import merge
from csfr.data import build_dataset, test_pipeline, train_pipeline
from csfr.data.base import SegmentationDataset
from csfr.data.transforms import Pipeline


def build_datasets(config: dict, train: bool = True) -> tuple[SegmentationDataset | None, SegmentationDataset]:
    """(training set with the training augmentation or None, validation set with the test pipeline)."""
    data, seed = config["data"], config["train"]["seed"]
    val = build_dataset(data["dataset"], data["root"], data["val_split"], transform=eval_transform(config), seed=seed,
                        **merge(data["options"], data["val_options"]))
    if not train:
        return None, val
    augment = train_pipeline(_size(data["base_size"]), _size(data["crop_size"]), tuple(data["ratio_range"]),
                             data["cat_max_ratio"], flip=data["flip"], photometric=data["photometric"])
    return build_dataset(data["dataset"], data["root"], data["train_split"], transform=augment, seed=seed,
                         **data["options"]), val


def eval_transform(config: dict) -> Pipeline:
    """The evaluation pipeline of a config: resize to eval.base_size (where set), normalise."""
    return test_pipeline(_size(config["eval"]["base_size"]))


def _size(value):
    """JSON lists -> tuples (sizes are (h, w) or (long, short) pairs, or one int)."""
    return tuple(value) if isinstance(value, list) else value


def build_model(config: dict, num_classes: int) -> nn.Module:
    model = config["model"]
    return models.build(model["name"], num_classes, pretrained=model["pretrained"],
                        backend=config["train"]["backend"], **model["options"])
