"""Losses of the CSFR network: the Class-Aware Consistency loss and segmentation cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csfr.ops import cac_terms
from csfr.ops.layout import IGNORE_INDEX


def downsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour downsampling of a [B,H,W] integer label map to `size` (ignore values kept).

    Labels smaller than `size` in either side raise ValueError: upsampling a coarse label map would
    invent labels at pixels nobody annotated.
    """
    height, width = labels.shape[-2:]
    if height < size[0] or width < size[1]:
        raise ValueError(f"labels {height}x{width} are smaller than the features {size[0]}x{size[1]}: labels are "
                         "nearest-downsampled to the features' size, never upsampled; pass the full-resolution "
                         "label map (or one at the features' size)")
    if (height, width) == tuple(size):
        return labels
    return F.interpolate(labels.unsqueeze(1).float(), size=size, mode="nearest").squeeze(1).long()


def _label_map(labels: Tensor, batch: int, where: str) -> Tensor:
    """The [B, H, W] integer label map; MMSegmentation's [B, 1, H, W] layout is accepted and squeezed."""
    if isinstance(labels, Tensor) and labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if not isinstance(labels, Tensor) or labels.dim() != 3:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{where}: labels must be a [B, H, W] (or [B, 1, H, W]) label map, got {shape}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{where}: labels must be an integer tensor, got {labels.dtype}")
    if labels.shape[0] != batch:
        raise ValueError(f"{where}: labels batch {labels.shape[0]} != features batch {batch}")
    return labels


CENTROIDS = ("image", "batch")


def check_centroids(centroids: str) -> None:
    if centroids not in CENTROIDS:
        raise ValueError(f"unknown cac_centroids {centroids!r}; valid: {', '.join(CENTROIDS)}")


class ClassAwareConsistencyLoss(nn.Module):
    """CAC loss on C-S features [B,D,h,w] against the full-resolution label map [B,H,W]
    (or MMSegmentation's [B,1,H,W]).

    Labels are nearest-downsampled to h x w (labels smaller than the features raise ValueError),
    then the fused `cac_loss` operator runs. The result is a dict of the two weighted terms, so a
    training loop can log them apart.

    Args:
        num_classes: K; labels outside [0, K) other than `ignore_index` are refused.
        delta_v, delta_d: the intra (pull) and inter (push) margins, in the features' units.
        w_intra, w_inter: weights of the two terms.
        ignore_index: the label of pixels that count nowhere.
        backend: kernel backend of the fused operator ("auto", "torch", "cpu", "cuda", "triton").
        centroids: "image" (a centroid per image and class, the operator's own definition) or
            "batch" (one per class over the whole batch: pixels of one class in different images
            are pulled to one centroid, and classes of different images are pushed apart).
    """

    def __init__(self, num_classes: int, *, delta_v: float = 0.5, delta_d: float = 1.5,
                 w_intra: float = 1.0, w_inter: float = 1.0, ignore_index: int = IGNORE_INDEX,
                 backend: str = "auto", centroids: str = "image"):
        super().__init__()
        check_centroids(centroids)
        self.num_classes, self.ignore_index, self.backend = num_classes, ignore_index, backend
        self.delta_v, self.delta_d = delta_v, delta_d
        self.w_intra, self.w_inter = w_intra, w_inter
        self.centroids = centroids

    def forward(self, feats: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """{"cac_intra", "cac_inter"}: the weighted terms, scalars (float32; float64 for float64 features)."""
        if feats.dim() != 4:
            raise ValueError(f"ClassAwareConsistencyLoss: features must be [B, D, h, w], got {tuple(feats.shape)}")
        labels = _label_map(labels, feats.shape[0], "ClassAwareConsistencyLoss")
        small = downsample_labels(labels, tuple(feats.shape[-2:]))
        if self.centroids == "batch":  # the batch as one tall image: [1, D, B*h, w], labels [1, B*h, w]
            b, d, h, w = feats.shape
            feats = feats.transpose(0, 1).reshape(1, d, b * h, w)
            small = small.reshape(1, b * h, w)
        intra, inter = cac_terms(feats, small, self.num_classes, self.delta_v, self.delta_d,
                                 self.ignore_index, self.backend)
        return {"cac_intra": self.w_intra * intra, "cac_inter": self.w_inter * inter}

    def total(self, feats: Tensor, labels: Tensor) -> Tensor:
        """The summed loss w_intra * intra + w_inter * inter."""
        terms = self(feats, labels)
        return terms["cac_intra"] + terms["cac_inter"]

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, delta_v={self.delta_v}, delta_d={self.delta_d}, "
                f"w_intra={self.w_intra}, w_inter={self.w_inter}, ignore_index={self.ignore_index}, "
                f"centroids={self.centroids!r}")


class SegmentationCrossEntropy(nn.Module):
    """Pixel-wise cross-entropy; logits are bilinearly resized to the label map ([B,H,W] or
    [B,1,H,W]) if needed."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, weight: float = 1.0):
        super().__init__()
        self.ignore_index, self.weight = ignore_index, weight

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        labels = _label_map(labels, logits.shape[0], "SegmentationCrossEntropy")
        if tuple(logits.shape[-2:]) != tuple(labels.shape[-2:]):
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        labels = labels.long()
        total = F.cross_entropy(logits.float(), labels, ignore_index=self.ignore_index, reduction="sum")
        # mean over counted pixels; a batch whose pixels are all ignored gives 0, not NaN
        count = (labels != self.ignore_index).sum().clamp_min(1)
        return self.weight * total / count
