"""Pure-PyTorch ground truth for the csfr operators (docs/design.md, "The operators").

Readable over fast: every other backend is tested against these functions. Features are
[B, D, *spatial], labels [B, *spatial]; arithmetic is fp32 for fp32/fp16/bf16 inputs and fp64 for fp64.
Norms use a zero subgradient at distance 0, so coincident points never yield NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from csfr.ops.layout import IGNORE_INDEX

__all__ = ["cac_loss", "cac_loss_pairwise", "cac_terms", "class_centroids", "gated_blend", "weighted_loss"]


def _acc(t: Tensor) -> Tensor:
    """t in the accumulation dtype: float64 stays float64, everything else becomes float32."""
    return t if t.dtype == torch.float64 else t.float()


def _flatten(feats: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """[B,D,N] features in the accumulation dtype, [B,N] int64 labels (one_hot takes no other)."""
    b, d = feats.shape[:2]
    return _acc(feats.reshape(b, d, -1)), labels.reshape(b, -1).long()


def _safe_norm(x: Tensor, dim: int) -> Tensor:
    """Euclidean norm whose gradient is 0 (not NaN) where the norm is 0."""
    sq = (x * x).sum(dim)
    nonzero = sq > 0
    return torch.where(nonzero, torch.where(nonzero, sq, 1.0).sqrt(), 0.0)


def class_centroids(feats: Tensor, labels: Tensor, num_classes: int,
                    ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Per-image class means mu [B,K,D] (features' dtype) and pixel counts n [B,K] (int64).

    Absent classes get mu = 0 and n = 0; ignored pixels count nowhere.
    """
    f, y = _flatten(feats, labels)
    valid = y != ignore_index
    onehot = torch.nn.functional.one_hot(torch.where(valid, y, 0), num_classes).to(f.dtype)
    onehot = onehot * valid.unsqueeze(-1)  # [B, N, K]
    counts = onehot.sum(1)  # [B, K]
    sums = torch.einsum("bdn,bnk->bkd", f, onehot)
    mu = sums / counts.clamp_min(1).unsqueeze(-1)
    return mu.to(feats.dtype), counts.long()


def cac_terms(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float = 0.5,
              delta_d: float = 1.5, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Unweighted (intra, inter) CAC terms as a tensor of shape [2] (float32; float64 for float64).

    intra: mean over images with >= 1 class of mean_{k present} mean_{i in k} hinge(||f_i - mu_k|| - delta_v)^2.
    inter: mean over images with >= 2 classes of mean_{a != c present} hinge(2 delta_d - ||mu_a - mu_c||)^2.
    A term defined for no image is 0.
    """
    f, y = _flatten(feats, labels)
    valid = y != ignore_index
    onehot = torch.nn.functional.one_hot(torch.where(valid, y, 0), num_classes).to(f.dtype)
    onehot = onehot * valid.unsqueeze(-1)
    counts = onehot.sum(1)  # [B, K]
    mu = torch.einsum("bdn,bnk->bkd", f, onehot) / counts.clamp_min(1).unsqueeze(-1)
    present = counts > 0
    n_present = present.sum(1)  # [B]

    # intra: distance of every valid pixel to its own class centroid
    mu_of_pixel = torch.gather(mu, 1, torch.where(valid, y, 0).unsqueeze(-1).expand(-1, -1, f.shape[1]))
    r = _safe_norm(f.transpose(1, 2) - mu_of_pixel, dim=2)  # [B, N]
    hinge = torch.clamp(r - delta_v, min=0) ** 2 * valid
    per_class = torch.einsum("bn,bnk->bk", hinge, onehot) / counts.clamp_min(1)
    has_intra = n_present >= 1
    intra_img = per_class.sum(1) / n_present.clamp_min(1)
    intra = (intra_img * has_intra).sum() / has_intra.sum().clamp_min(1)

    # inter: every ordered pair of distinct present classes
    diff = mu.unsqueeze(2) - mu.unsqueeze(1)  # [B, K, K, D]
    dist = _safe_norm(diff, dim=3)
    pair = present.unsqueeze(2) & present.unsqueeze(1)
    pair = pair & ~torch.eye(num_classes, dtype=torch.bool, device=f.device)
    push = torch.clamp(2 * delta_d - dist, min=0) ** 2 * pair
    n_pairs = (n_present * (n_present - 1)).clamp_min(1)
    has_inter = n_present >= 2
    inter_img = push.sum((1, 2)) / n_pairs
    inter = (inter_img * has_inter).sum() / has_inter.sum().clamp_min(1)
    return torch.stack([intra, inter])


def cac_loss(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float = 0.5,
             delta_d: float = 1.5, w_intra: float = 1.0, w_inter: float = 1.0,
             ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Class-Aware Consistency loss, a scalar: w_intra * intra + w_inter * inter."""
    return weighted_loss(cac_terms(feats, labels, num_classes, delta_v, delta_d, ignore_index), w_intra, w_inter)


def weighted_loss(terms: Tensor, w_intra: float, w_inter: float) -> Tensor:
    """w_intra * intra + w_inter * inter of the [2] terms: the loss's one weighting in Python (the fused
    ops weight in their class part, csrc and kernels/cac_loss.cu)."""
    return w_intra * terms[0] + w_inter * terms[1]


def cac_loss_pairwise(feats: Tensor, labels: Tensor, num_classes: int,
                      ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The paper's O(N^2) consistency term: per image, mean over present classes of the mean
    squared distance over all ordered same-class pixel pairs, halved; averaged over images with
    a class. Equals the intra term of `cac_terms` with delta_v = 0. Small N only.
    """
    f, y = _flatten(feats, labels)
    per_image = []
    for b in range(f.shape[0]):
        terms = []
        for k in range(num_classes):
            fk = f[b][:, y[b] == k].T  # [n_k, D]
            if fk.shape[0] == 0:
                continue
            d2 = ((fk.unsqueeze(0) - fk.unsqueeze(1)) ** 2).sum(-1)  # [n_k, n_k]
            terms.append(d2.sum() / (2 * fk.shape[0] ** 2))
        if terms:
            per_image.append(torch.stack(terms).mean())
    if not per_image:
        return f.sum() * 0
    return torch.stack(per_image).mean()


def gated_blend(x: Tensor, s: Tensor, g: Tensor) -> Tensor:
    """z = x + sigmoid(g) * (s - x); g broadcasts to x (per pixel, per channel or full)."""
    gate = torch.sigmoid(_acc(g))
    xf = _acc(x)  # cast once: dx is summed in fp32 and rounded once, not as two rounded halves
    return (xf + gate * (_acc(s) - xf)).to(x.dtype)
