"""A training config small enough for tests: a width-8 CSFR on 32x32 synthetic scenes."""

from csfr import configs

TINY = ["model.options.width=8", "model.options.head_channels=16", "model.options.csfr_dim=16",
        "data.options.num_classes=4", "data.options.size=40", "data.options.length=64",
        "data.val_options.length=6", "data.base_size=[40,40]", "data.crop_size=[32,32]", "data.workers=0",
        "train.batch_size=4", "train.iters=6", "train.log_interval=1", "train.val_interval=0",
        "train.ckpt_interval=3", "train.warmup_iters=2", "train.device=cpu", "eval.save_predictions=2"]


def tiny_config(*overrides: str) -> dict:
    return configs.resolve("synthetic", [*TINY, *overrides])
