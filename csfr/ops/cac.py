"""cac_loss: the Class-Aware Consistency loss as a fused torch.library custom op.

The fused backends make two passes over the features forward (segment_sum, then
cac_pixel_pass) and one backward (pixel_grad). The inter-class term only involves the
[B,K,D] centroids, so it is computed here with small dense torch ops (a K x K Gram matrix
per image) and never touches the features.
"""

from __future__ import annotations

import torch
from torch import Tensor

from csfr.ops import reference
from csfr.ops.centroids import acc_dtype, flat_features, flat_labels, pixel_grad
from csfr.ops.checks import (
    check_features_labels,
    check_finite_features,
    check_finite_sums,
    check_label_values,
    nan_unless_finite,
)
from csfr.ops.dispatch import kernels, resolve


def _centred(mu: Tensor, present: Tensor) -> Tensor:
    """Centroids minus the mean of each image's present centroids (absent rows 0).

    Distances and the inter gradient are translation invariant; real (post-ReLU) features share
    a large common offset, which would otherwise cancel catastrophically in the Gram matrix.
    """
    weight = present.unsqueeze(-1).to(mu.dtype)
    centre = (mu * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1)
    return (mu - centre) * weight


def _pair_distances(mu: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
    """Distances [B,K,K] between centred centroids `mu` (via their Gram matrix, so no [B,K,K,D]
    tensor) and the mask of distinct present pairs."""
    sq = (mu * mu).sum(-1)
    d2 = (sq.unsqueeze(2) + sq.unsqueeze(1) - 2 * mu @ mu.transpose(1, 2)).clamp_min(0)
    pair = present.unsqueeze(2) & present.unsqueeze(1)
    pair &= ~torch.eye(mu.shape[1], dtype=torch.bool, device=mu.device)
    return d2.sqrt() * pair, pair


def _image_weights(present: Tensor, min_classes: int) -> tuple[Tensor, Tensor]:
    """Images where a term is defined (>= min_classes present) and their count (>= 1)."""
    defined = present.sum(1) >= min_classes
    return defined, defined.sum().clamp_min(1)


def _terms(mu: Tensor, counts: Tensor, hinge: Tensor, delta_d: float) -> Tensor:
    present = counts > 0
    n_present = present.sum(1)
    has_intra, n_intra = _image_weights(present, 1)
    intra_img = (hinge / counts.clamp_min(1)).sum(1) / n_present.clamp_min(1)
    dist, pair = _pair_distances(_centred(mu, present), present)
    has_inter, n_inter = _image_weights(present, 2)
    push = (torch.clamp(2 * delta_d - dist, min=0) ** 2 * pair).sum((1, 2))
    inter_img = push / (n_present * (n_present - 1)).clamp_min(1)
    return torch.stack([(intra_img * has_intra).sum() / n_intra, (inter_img * has_inter).sum() / n_inter])


def _inter_grad(mu: Tensor, counts: Tensor, delta_d: float) -> Tensor:
    """d(inter)/d(mu) [B,K,D]: each ordered pair pulls with weight -2 hinge / dist."""
    present = counts > 0
    n_present = present.sum(1)
    mu = _centred(mu, present)
    dist, pair = _pair_distances(mu, present)
    has_inter, n_inter = _image_weights(present, 2)
    scale = has_inter / (n_inter * (n_present * (n_present - 1)).clamp_min(1))
    active = pair & (dist > 0) & (dist < 2 * delta_d)
    w = torch.where(active, -2 * (2 * delta_d - dist) / torch.where(active, dist, 1.0), 0.0)
    w = w * scale[:, None, None]
    # both orders (a,c) and (c,a) contribute: 2 * sum_c w_ac (mu_a - mu_c)
    return 2 * (mu * w.sum(2, keepdim=True) - w @ mu)


@torch.library.custom_op("csfr::cac_loss_terms", mutates_args=())
def _cac_terms(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float, delta_d: float,
               ignore_index: int, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """feats [B,D,N] contiguous (see `flat_features`), labels [B,*sp]."""
    check_label_values(labels, num_classes, ignore_index, "cac_loss")
    k = kernels(backend)
    y = flat_labels(labels)
    sums, counts = k.segment_sum(feats, y, num_classes, ignore_index)
    check_finite_sums(sums, "cac_loss")
    mu = (sums / counts.clamp_min(1).unsqueeze(-1)).contiguous()
    coef, hinge, wsum, wcount = k.cac_pixel_pass(feats, y, mu, delta_v, ignore_index)
    terms = nan_unless_finite(_terms(mu, counts, hinge, delta_d), sums)
    return terms, mu, counts, coef, wsum, wcount


@_cac_terms.register_fake
def _(feats, labels, num_classes, delta_v, delta_d, ignore_index, backend):
    b, d, n = feats.shape
    acc = acc_dtype(feats.dtype)
    return (feats.new_empty(2, dtype=acc), feats.new_empty(b, num_classes, d, dtype=acc),
            feats.new_empty(b, num_classes, dtype=acc), feats.new_empty(b, n, dtype=acc),
            feats.new_empty(b, num_classes, d, dtype=acc), feats.new_empty(b, num_classes, dtype=acc))


def _setup_context(ctx, inputs, output):
    feats, labels, _, _, delta_d, ignore_index, backend = inputs
    _, mu, counts, coef, wsum, _ = output
    ctx.save_for_backward(feats, labels, mu, counts, coef, wsum)
    ctx.delta_d, ctx.ignore_index, ctx.backend = delta_d, ignore_index, backend
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, grad_terms, *_):
    feats, labels, mu, counts, coef, wsum = ctx.saved_tensors
    go = grad_terms.to(mu.dtype)
    present = counts > 0
    has_intra, n_intra = _image_weights(present, 1)
    # d(intra)/d(f_i) direct part is a[y_i] * coef_i * (f_i - mu[y_i])
    a = go[0] * has_intra.unsqueeze(1) * present / (
        n_intra * present.sum(1, keepdim=True).clamp_min(1) * counts.clamp_min(1))
    # gradient reaching the centroids, from intra (through mu: wsum = sum coef_i (f_i - mu)) and from inter
    g_mu = -a.unsqueeze(-1) * wsum + go[1] * _inter_grad(mu, counts, ctx.delta_d)
    g = (g_mu / counts.clamp_min(1).unsqueeze(-1)).contiguous()
    dfeats = pixel_grad(feats, labels, g, ctx.ignore_index, ctx.backend, mu, coef, a.contiguous())
    return dfeats, None, None, None, None, None, None


_cac_terms.register_autograd(_backward, setup_context=_setup_context)


def _check_margins(delta_v: float, delta_d: float) -> None:
    if delta_v < 0 or delta_d < 0:
        raise ValueError(f"cac_loss: margins must be >= 0, got delta_v={delta_v}, delta_d={delta_d}")


def cac_terms(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float = 0.5,
              delta_d: float = 1.5, ignore_index: int = 255, backend: str = "auto") -> Tensor:
    """The unweighted (intra, inter) CAC terms [2] (float32; float64 for float64 features)."""
    check_features_labels(feats, labels, num_classes, "cac_loss")
    _check_margins(delta_v, delta_d)
    name = resolve(backend, feats.device)
    if name == "torch":
        if not torch.compiler.is_compiling():
            check_label_values(labels, num_classes, ignore_index, "cac_loss")
            check_finite_features(feats, labels, ignore_index, "cac_loss")
        return reference.cac_terms(feats, labels, num_classes, delta_v, delta_d, ignore_index)
    return _cac_terms(flat_features(feats), labels, num_classes, float(delta_v), float(delta_d), ignore_index,
                      name)[0]


def cac_loss(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float = 0.5,
             delta_d: float = 1.5, w_intra: float = 1.0, w_inter: float = 1.0,
             ignore_index: int = 255, backend: str = "auto") -> Tensor:
    """Class-Aware Consistency loss (docs/design.md, operator 2), a float32 scalar (float64 for float64 input).

    feats [B, D, *spatial] (C-S features), labels [B, *spatial] already at feature resolution.
    NaN/Inf features raise on CPU tensors; on a GPU (where raising would cost a host
    synchronisation) the loss is NaN instead.
    """
    intra, inter = cac_terms(feats, labels, num_classes, delta_v, delta_d, ignore_index, backend)
    return w_intra * intra + w_inter * inter
