"""A training config small enough for tests: a width-8 CSFR on 32x32 synthetic scenes."""

import numpy as np
import torch

from csfr import configs
from csfr.engine import checkpoint
from csfr.engine.builders import build_datasets, build_model

TINY = ["model.options.width=8", "model.options.head_channels=16", "model.options.csfr_dim=16",
        "data.options.num_classes=4", "data.options.size=40", "data.options.length=64",
        "data.val_options.length=6", "data.base_size=[40,40]", "data.crop_size=[32,32]", "data.workers=0",
        "train.batch_size=4", "train.iters=6", "train.log_interval=1", "train.val_interval=0",
        "train.ckpt_interval=3", "train.warmup_iters=2", "train.device=cpu", "eval.save_predictions=2"]


def tiny_config(*overrides: str) -> dict:
    return configs.resolve("synthetic", [*TINY, *overrides])


def checkpoint_of(path, *overrides: str) -> dict:
    """Write a checkpoint as csfr.train does (with class metadata) of the tiny config's model, whose
    predictions vary over an image (random weights; BatchNorm statistics of the validation images
    computed in one pass); returns the config."""
    config = tiny_config(*overrides)
    dataset = build_datasets(config, train=False)[1]
    model = build_model(config, dataset.num_classes).train()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.momentum = None  # running statistics = the average over the passes (here: one)
    with torch.no_grad():
        model(torch.from_numpy(np.stack([dataset[j]["image"] for j in range(len(dataset))])))
    checkpoint.save({"iteration": 1, "model": model.state_dict(), "config": config,
                     "num_classes": dataset.num_classes, **checkpoint.class_info(dataset)}, path)
    return config
