"""Scoring a model on a dataset split, sharded over ranks, with an all-reduced confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from csfr.data import collate
from csfr.data.base import SegmentationDataset, save_png
from csfr.data.cityscapes import ID_TO_TRAIN_ID
from csfr.data.transforms import MEAN, STD
from csfr.engine import distributed
from csfr.engine.inference import predict
from csfr.engine.metrics import confusion_matrix, scores
from csfr.engine.precision import autocast

FORMATS = ("color", "cityscapes")


def _train_id_to_label_id() -> np.ndarray:
    """Cityscapes trainId -> official labelId, for test-server submissions (255 -> 0, "unlabeled")."""
    table = np.zeros(256, np.uint8)
    for label_id, train_id in enumerate(ID_TO_TRAIN_ID[:34]):
        if train_id != 255:
            table[train_id] = label_id
    return table


class PredictionWriter:
    """Writes, per image, a coloured prediction and an overlay on the image (`color`), or the
    Cityscapes test-server PNG of label ids named after the image (`cityscapes`)."""

    def __init__(self, out_dir: Path, palette: np.ndarray, fmt: str = "color", limit: int | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown prediction format {fmt!r}; valid: {', '.join(FORMATS)}")
        self.out_dir, self.palette, self.fmt, self.limit, self.written = Path(out_dir), palette, fmt, limit, 0
        self.label_ids = _train_id_to_label_id() if fmt == "cityscapes" else None
        for sub in (("cityscapes",) if fmt == "cityscapes" else ("pred", "overlay")):
            (self.out_dir / sub).mkdir(parents=True, exist_ok=True)

    def __call__(self, pred: np.ndarray, image: np.ndarray, meta: dict) -> None:
        if self.limit is not None and self.written >= self.limit:
            return
        path = meta.get("image_path")
        stem = Path(path).stem if path else f"{meta.get('index', self.written):06d}"
        if self.fmt == "cityscapes":
            save_png(self.label_ids[pred], self.out_dir / "cityscapes" / f"{stem}.png")
        else:
            colour = self.palette[pred]
            save_png(colour, self.out_dir / "pred" / f"{stem}.png")
            overlay = (0.5 * image.astype(np.float32) + 0.5 * colour.astype(np.float32)).astype(np.uint8)
            save_png(overlay, self.out_dir / "overlay" / f"{stem}.png")
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
        with autocast(ctx.device, amp):
            probs = predict(model, image, label.shape[-2:], eval_cfg["mode"], eval_cfg["crop_size"],
                            eval_cfg["stride"], eval_cfg["scales"], eval_cfg["flip"])
        pred = probs.argmax(1)
        cm += confusion_matrix(pred, label, k, dataset.ignore_index)
        if writer is not None:
            for i, meta in enumerate(batch["meta"]):
                writer(pred[i].cpu().numpy().astype(np.uint8), _display_image(image[i], tuple(label.shape[-2:])),
                       meta)
    distributed.all_reduce_sum(cm)
    model.train(was_training)
    return scores(cm.cpu(), dataset.class_names)
