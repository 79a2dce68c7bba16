"""Batching for torch DataLoaders."""

from __future__ import annotations

import numpy as np
import torch


def _chw(image: np.ndarray) -> np.ndarray:
    """Untransformed HxWx3 uint8 images become 3xHxW (values kept); transformed ones already are."""
    return image.transpose(2, 0, 1) if image.dtype == np.uint8 else image


def collate(batch: list[dict]) -> dict:
    """{"image": float32 [B,3,H,W], "label": int64 [B,H,W], "meta": [meta, ...]}. Images must share one
    size and labels one size (the two may differ: test_pipeline(base_size) resizes only the image)."""
    images = [_chw(np.asarray(item["image"])) for item in batch]
    labels = [np.asarray(item["label"]) for item in batch]
    if len({im.shape for im in images}) > 1 or len({lb.shape for lb in labels}) > 1:
        sizes = ", ".join(f"{item['meta'].get('image_path') or item['meta'].get('index')}: image "
                          f"{im.shape[1:]} label {lb.shape}" for item, im, lb in zip(batch, images, labels))
        raise ValueError(f"collate: items differ in size (crop or pad them to one size first): {sizes}")
    return {"image": torch.from_numpy(np.stack(images).astype(np.float32, copy=False)),
            "label": torch.from_numpy(np.stack(labels).astype(np.int64, copy=False)),
            "meta": [item["meta"] for item in batch]}
