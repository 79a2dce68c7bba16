"""What a trained model's pixel features look like: separability and a PCA picture, per class.

Used by benchmarks/bench_train.py and study/first_study.py. Separability = mean distance between class centroids divided
by the mean intra-class spread (root mean squared distance to the own centroid), over all
validation pixels: large when classes are apart and compact, the two things the CAC loss asks for.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from csfr.data import collate


def analysed_features(model, images: Tensor) -> dict[str, Tensor]:
    """{"classifier input": X (baseline) or the AAM output z (CSFR), and for CSFR "S"}, at 1/OS."""
    if not getattr(model, "is_csfr", False):
        return {"classifier input": model.features(images)}
    z, s = model.head(model.backbone(images)[1])
    return {"classifier input": z, "S": s}


class Separability:
    """Accumulates per-class sums over batches of features [B, D, h, w] and full-size labels [B, H, W]."""

    def __init__(self, num_classes: int, ignore_index: int):
        self.k, self.ignore_index = num_classes, ignore_index
        self.sums = self.counts = self.squares = None

    def add(self, feats: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Adds one batch; returns its (pixel rows [N, D], labels [N]) without ignored pixels."""
        small = F.interpolate(labels[:, None].float(), feats.shape[-2:], mode="nearest").long().flatten()
        rows = feats.float().permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).cpu()
        keep = small != self.ignore_index
        rows, small = rows[keep], small[keep]
        if self.sums is None:
            self.sums = torch.zeros(self.k, rows.shape[1], dtype=torch.float64)
            self.counts, self.squares = torch.zeros(self.k, dtype=torch.float64), torch.zeros(self.k, dtype=torch.float64)
        self.sums.index_add_(0, small, rows.double())
        self.counts.index_add_(0, small, torch.ones(len(small), dtype=torch.float64))
        self.squares.index_add_(0, small, (rows.double() ** 2).sum(1))
        return rows, small

    def ratio(self) -> float:
        """Mean inter-centroid distance / mean intra-class RMS spread over the classes seen."""
        present = self.counts > 0
        mu = self.sums[present] / self.counts[present, None]
        spread = (self.squares[present] / self.counts[present] - (mu * mu).sum(1)).clamp_min(0).sqrt()
        n = len(mu)
        inter = torch.cdist(mu, mu).sum() / (n * (n - 1))
        return float(inter / spread.mean())


@torch.no_grad()
def feature_report(model, dataset, device, sample_per_class: int = 0, seed: int = 0) -> dict:
    """{name: {"separability": float, "sample": (rows [M, D], labels [M]) or None}} for each of
    `analysed_features` over `dataset`; the sample keeps up to `sample_per_class` random pixels
    per class (for pictures)."""
    model.eval()
    stats, rows, labels = {}, {}, {}
    for i in range(len(dataset)):
        item = collate([dataset[i]])
        for name, feats in analysed_features(model, item["image"].to(device)).items():
            stats.setdefault(name, Separability(dataset.num_classes, dataset.ignore_index))
            r, y = stats[name].add(feats, item["label"])
            if sample_per_class:
                rows.setdefault(name, []).append(r)
                labels.setdefault(name, []).append(y)
    report = {}
    for name, acc in stats.items():
        sample = None
        if sample_per_class:
            r, y = torch.cat(rows[name]), torch.cat(labels[name])
            gen = torch.Generator().manual_seed(seed)
            picks = [idx[torch.randperm(len(idx), generator=gen)[:sample_per_class]]
                     for idx in (torch.nonzero(y == k).flatten() for k in range(dataset.num_classes))]
            picks = torch.cat(picks)
            sample = (r[picks], y[picks])
        report[name] = {"separability": acc.ratio(), "sample": sample}
    return report


def pca_2d(rows: Tensor) -> Tensor:
    """The first two principal components of `rows` [M, D] (centred), [M, 2]."""
    centred = rows - rows.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T


def plot_panels(panels: list[tuple[str, Tensor, Tensor]], class_names, palette, path) -> None:
    """One PCA scatter per (title, rows, labels), coloured by class with the dataset palette; PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    for ax, (title, rows, labels) in zip(axes[0], panels):
        xy = pca_2d(rows).numpy()
        for k, name in enumerate(class_names):
            mask = (labels == k).numpy()
            ax.scatter(xy[mask, 0], xy[mask, 1], s=4, alpha=0.6, color=[c / 255 for c in palette[k]], label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=3, frameon=False)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
