"""Scoring a model on a dataset split, sharded over ranks, with an all-reduced confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from csfr.data import collate
from csfr.data.base import SegmentationDataset, save_png
from csfr.data.cityscapes import ID_TO_TRAIN_ID
from csfr.data.transforms import MEAN, STD
from csfr.engine import distributed, panels
from csfr.engine.inference import label_maps
from csfr.engine.metrics import confusion_matrix, scores
from csfr.ops.layout import IGNORE_INDEX

FORMATS = ("color", "cityscapes")


def _train_id_to_label_id() -> np.ndarray:
    """Cityscapes trainId -> official labelId, for test-server submissions (255 -> 0, "unlabeled")."""
    table = np.zeros(256, np.uint8)
    for label_id, train_id in enumerate(ID_TO_TRAIN_ID[:34]):
        if train_id != IGNORE_INDEX:
            table[train_id] = label_id
    return table


class PredictionWriter:
    """Writes, per image, `color`: the prediction as a palette PNG of class ids (pred/), an overlay
    on the image (overlay/) and a panel input | ground truth | prediction | errors with a legend
    (panel/); or `cityscapes`: the Cityscapes test-server PNG of label ids named after the image.
    Files are named after meta["name"], else the image file's stem, else the item's index."""

    def __init__(self, out_dir: Path, palette: np.ndarray, fmt: str = "color", limit: int | None = None,
                 class_names: Sequence[str] | None = None, ignore_index: int = IGNORE_INDEX):
        if fmt not in FORMATS:
            raise ValueError(f"unknown prediction format {fmt!r}; valid: {', '.join(FORMATS)}")
        self.out_dir, self.palette, self.fmt, self.limit, self.written = Path(out_dir), palette, fmt, limit, 0
        self.class_names = tuple(class_names) if class_names is not None else \
            tuple(f"class {k}" for k in range(len(palette)))
        self.ignore_index = ignore_index
        self.label_ids = _train_id_to_label_id() if fmt == "cityscapes" else None
        for sub in (("cityscapes",) if fmt == "cityscapes" else ("pred", "overlay", "panel")):
            (self.out_dir / sub).mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_dataset(cls, out_dir: Path, dataset: SegmentationDataset, fmt: str = "color",
                    limit: int | None = None) -> PredictionWriter:
        """A writer with the dataset's palette, class names and ignore index."""
        return cls(out_dir, dataset.palette, fmt, limit, dataset.class_names, dataset.ignore_index)

    def _path(self, sub: str, name: str) -> Path:
        path = self.out_dir / sub / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def __call__(self, pred: np.ndarray, image: np.ndarray, meta: dict, truth: np.ndarray | None = None) -> None:
        """pred: HxW train ids; image: HxWx3 uint8 at pred's size; truth: HxW train ids or None."""
        if self.limit is not None and self.written >= self.limit:
            return
        path = meta.get("image_path")
        name = meta.get("name") or (Path(path).stem if path else f"{meta.get('index', self.written):06d}")
        if self.fmt == "cityscapes":
            save_png(self.label_ids[pred], self._path("cityscapes", name))
        else:
            save_png(panels.label_png(pred, self.palette), self._path("pred", name))
            save_png(panels.overlay(image, pred, self.palette), self._path("overlay", name))
            save_png(panels.panel(image, pred, self.palette, self.class_names, truth, self.ignore_index),
                     self._path("panel", name))
        self.written += 1


def _display_image(normalised: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The network input turned back into an HxWx3 uint8 image at the label's size."""
    image = normalised.float().cpu()[None]
    if tuple(image.shape[-2:]) != size:
        image = torch.nn.functional.interpolate(image, size, mode="bilinear", align_corners=False)
    image = image[0].permute(1, 2, 0).numpy() * STD + MEAN
    return np.clip(image, 0, 255).astype(np.uint8)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: SegmentationDataset, ctx: distributed.Context, eval_cfg: dict,
             amp: str = "none", writer: PredictionWriter | None = None, workers: int = 0,
             progress: bool = True) -> dict:
    """Scores of `model` on `dataset` (whose transform is a test pipeline): this rank reads items
    rank, rank + world, ...; the confusion matrices are summed over ranks, so every rank returns
    the scores of the whole split."""
    was_training = model.training
    model.eval()
    indices = list(range(ctx.rank, len(dataset), ctx.world_size))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=1,
                                         num_workers=workers, collate_fn=collate,
                                         generator=torch.Generator())  # leaves the global RNG (dropout) alone
    k = dataset.num_classes
    cm = torch.zeros(k, k, dtype=torch.int64, device=ctx.device)
    for batch in tqdm(loader, desc=f"eval {dataset.name} {dataset.split}", disable=not (progress and ctx.is_main),
                      leave=False, dynamic_ncols=True):
        image = batch["image"].to(ctx.device, non_blocking=True)
        label = batch["label"].to(ctx.device, non_blocking=True)
        pred = label_maps(model, image, label.shape[-2:], eval_cfg, amp)
        cm += confusion_matrix(pred, label, k, dataset.ignore_index)
        if writer is not None:
            for i, meta in enumerate(batch["meta"]):
                writer(pred[i].cpu().numpy(), _display_image(image[i], tuple(label.shape[-2:])), meta,
                       label[i].cpu().numpy())
    distributed.all_reduce_sum(cm)
    model.train(was_training)
    return scores(cm.cpu(), dataset.class_names)
