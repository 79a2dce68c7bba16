"""cac_loss: the Class-Aware Consistency loss as a fused torch.library custom op.

On the C++ backends (cpu, cuda, and cuda_emulated, which runs the CUDA code on the CPU) the loss is
one op, csfr::cac_loss, whose backward is in C++ (csrc/fused_autograd.h): on a GPU four launches
forward (a clear, segment_sum, cac_pixel_pass, the class part) and one backward (docs/kernels.md,
"The fused ops"), with no host synchronisation. Triton keeps the composed form below: its
kernels make the same two passes forward and one backward, and the inter-class term, which only
involves the [B,K,D] centroids, is computed with small dense torch ops (a K x K Gram matrix per image).
"""

from __future__ import annotations

import torch
from torch import Tensor

from csfr.ops import checks, reference
from csfr.ops.centroids import pixel_grad
from csfr.ops.checks import (
    check_features_labels,
    check_finite_features,
    check_finite_sums,
    check_label_values,
    nan_unless_finite,
)
from csfr.ops.dispatch import FUSED_OPS, fused, kernels, resolve
from csfr.ops.layout import IGNORE_INDEX, acc_dtype, flat_features, flat_labels


def _class_part(mu: Tensor, counts: Tensor, inv_counts: Tensor, hinge: Tensor, wsum: Tensor,
                delta_d: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Everything of the loss that lives on the classes ([B, K] and [B, K, D], small and dense), from
    the kernels' per-class results, in one go so that the backward is a handful of operations:
    the (intra, inter) terms [2]; a_unit [B, K], the factor a[y] of the direct gradient
    a[y_i] coef_i (f_i - mu[y_i]) per unit upstream gradient of intra; g_intra and g_inter [B, K, D],
    the gradient reaching the pixels of each class through its centroid per unit upstream gradient
    of each term (already divided by the class counts).

    The centroids are centred on the mean of each image's present centroids first: distances and the
    inter gradient are translation invariant, and real (post-ReLU) features share a large common
    offset that would otherwise cancel catastrophically in the Gram matrix.
    """
    present = (counts > 0).to(mu.dtype)
    n = present.sum(1)  # classes present in each image
    inv_n = n.clamp_min(1).reciprocal()
    has_intra, has_inter = n.clamp(max=1), (n - 1).clamp(0, 1)  # images with >= 1, >= 2 classes
    n_intra, n_inter = has_intra.sum().clamp_min(1), has_inter.sum().clamp_min(1)
    intra = ((hinge * inv_counts).sum(1) * inv_n * has_intra).sum() / n_intra

    weight = present.unsqueeze(-1)
    centred = (mu - (mu * weight).sum(1, keepdim=True) * inv_n[:, None, None]) * weight
    sq = centred.square().sum(-1)
    # distances via the Gram matrix: no [B, K, K, D] tensor
    d2 = torch.baddbmm(sq.unsqueeze(2) + sq.unsqueeze(1), centred, centred.transpose(1, 2), alpha=-2)
    dist = d2.clamp_min(0).sqrt()
    pair = present.unsqueeze(2) * present.unsqueeze(1)  # distinct present classes
    pair.diagonal(dim1=1, dim2=2).zero_()
    gap = (2 * delta_d - dist).clamp_min(0) * pair
    pairs = (n * (n - 1)).clamp_min(1)
    inter = (gap.square().sum((1, 2)) / pairs * has_inter).sum() / n_inter
    # d(inter)/d(mu): each ordered pair (a, c) pulls with weight -2 gap / dist, and both orders count
    w = torch.where(dist > 0, gap / dist, 0) * (-2 * has_inter / (n_inter * pairs))[:, None, None]
    g_inter = 2 * (centred * w.sum(2, keepdim=True) - w @ centred) * inv_counts.unsqueeze(-1)

    a_unit = present * (has_intra * inv_n).unsqueeze(1) * inv_counts / n_intra
    # through mu, intra reaches the pixels with -a[c] wsum[c] / n_c (wsum = sum of coef_i (f_i - mu))
    g_intra = -(a_unit * inv_counts).unsqueeze(-1) * wsum
    return torch.stack([intra, inter]), a_unit, g_intra, g_inter


@torch.library.custom_op("csfr::cac_loss_terms", mutates_args=())
def _cac_terms(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float, delta_d: float,
               ignore_index: int, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """feats [B,D,N] contiguous (see `flat_features`), labels [B,*sp]. Returns the terms and what
    the backward needs (`_class_part`)."""
    check_label_values(labels, num_classes, ignore_index, "cac_loss")
    k = kernels(backend)
    y = flat_labels(labels)
    sums, counts = k.segment_sum(feats, y, num_classes, ignore_index)
    check_finite_sums(sums, "cac_loss")
    inv_counts = counts.clamp_min(1).reciprocal()
    mu = (sums * inv_counts.unsqueeze(-1)).contiguous()
    coef, hinge, wsum, _ = k.cac_pixel_pass(feats, y, mu, delta_v, ignore_index)
    terms, a_unit, g_intra, g_inter = _class_part(mu, counts, inv_counts, hinge, wsum, delta_d)
    return nan_unless_finite(terms, sums), mu, coef, a_unit, g_intra, g_inter


@_cac_terms.register_fake
def _(feats, labels, num_classes, delta_v, delta_d, ignore_index, backend):
    b, d, n = feats.shape
    acc = acc_dtype(feats.dtype)
    per_class = feats.new_empty(b, num_classes, d, dtype=acc)
    return (feats.new_empty(2, dtype=acc), per_class, feats.new_empty(b, n, dtype=acc),
            feats.new_empty(b, num_classes, dtype=acc), torch.empty_like(per_class), torch.empty_like(per_class))


def _setup_context(ctx, inputs, output):
    feats, labels, _, _, _, ignore_index, backend = inputs
    ctx.save_for_backward(feats, labels, *output[1:])
    ctx.ignore_index, ctx.backend = ignore_index, backend
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero-filled gradients for those five outputs


def _backward(ctx, grad_terms, *_):
    feats, labels, mu, coef, a_unit, g_intra, g_inter = ctx.saved_tensors
    if grad_terms is None:  # grads are not materialised (setup_context): none reached the terms
        return None, None, None, None, None, None, None
    go_intra, go_inter = grad_terms.to(mu.dtype).unbind()
    g = torch.addcmul(go_intra * g_intra, go_inter, g_inter)
    dfeats = pixel_grad(feats, labels, g, ctx.ignore_index, ctx.backend, mu, coef, go_intra * a_unit)
    return dfeats, None, None, None, None, None, None


_cac_terms.register_autograd(_backward, setup_context=_setup_context)


def _check_margins(delta_v: float, delta_d: float) -> None:
    if delta_v < 0 or delta_d < 0:
        raise ValueError(f"cac_loss: margins must be >= 0, got delta_v={delta_v}, delta_d={delta_d}")


def _fused(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float, delta_d: float, w_intra: float,
           w_inter: float, ignore_index: int, name: str) -> tuple[Tensor, Tensor]:
    """(loss, terms) of the fused op of a C++ backend. On CPU tensors of the cpu backend the values are
    checked on the host (an error naming the label, or the image and class of a non-finite feature); the
    CUDA code path (cuda, and cuda_emulated on CPU tensors) reads nothing back: a bad label is a
    device-side assertion and a non-finite feature makes the terms NaN."""
    host = checks.fused_host_checks(name, labels)
    if host:
        check_label_values(labels, num_classes, ignore_index, "cac_loss")
    loss, terms, _ = fused(name, "cac_loss")(flat_features(feats), flat_labels(labels), num_classes, float(delta_v),
                                            float(delta_d), float(w_intra), float(w_inter), ignore_index)
    if host and not bool(torch.isfinite(terms).all()):
        check_finite_features(feats, labels, ignore_index, "cac_loss")  # raises, naming where
    return loss, terms


def _checked_backend(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float, delta_d: float,
                     backend: str) -> str:
    """The argument checks of cac_terms and cac_loss, done once per call; returns the concrete backend."""
    check_features_labels(feats, labels, num_classes, "cac_loss")
    _check_margins(delta_v, delta_d)
    return resolve(backend, feats.device)


def _composed_terms(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float, delta_d: float,
                    ignore_index: int, name: str) -> Tensor:
    """The terms on a backend without a fused op: the reference (torch) or Triton's composed form."""
    if name == "torch":
        if not torch.compiler.is_compiling():
            check_label_values(labels, num_classes, ignore_index, "cac_loss")
            check_finite_features(feats, labels, ignore_index, "cac_loss")
        return reference.cac_terms(feats, labels, num_classes, delta_v, delta_d, ignore_index)
    return _cac_terms(flat_features(feats), labels, num_classes, float(delta_v), float(delta_d), ignore_index,
                      name)[0]


def cac_terms(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float = 0.5,
              delta_d: float = 1.5, ignore_index: int = IGNORE_INDEX, backend: str = "auto") -> Tensor:
    """The unweighted (intra, inter) CAC terms (docs/design.md, operator 2).

    Args:
        feats: C-S features [B, D, *spatial] (float32, float16, bfloat16 or float64).
        labels: [B, *spatial] at the features' size, any integer dtype; values in
            [0, num_classes) or `ignore_index`.
        num_classes: K.
        delta_v, delta_d: the pull and push margins (>= 0), in the features' units.
        ignore_index: label of the pixels that count nowhere (default 255).
        backend: "auto", "torch", "cpu", "cuda" or "triton".

    Returns:
        [2] tensor (intra, inter), float32 (float64 for float64 features); differentiable in feats.
    """
    name = _checked_backend(feats, labels, num_classes, delta_v, delta_d, backend)
    if name in FUSED_OPS:
        return _fused(feats, labels, num_classes, delta_v, delta_d, 1.0, 1.0, ignore_index, name)[1]
    return _composed_terms(feats, labels, num_classes, delta_v, delta_d, ignore_index, name)


def cac_loss(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float = 0.5,
             delta_d: float = 1.5, w_intra: float = 1.0, w_inter: float = 1.0,
             ignore_index: int = IGNORE_INDEX, backend: str = "auto") -> Tensor:
    """Class-Aware Consistency loss, w_intra * intra + w_inter * inter (docs/design.md, operator 2).

    Args: as `cac_terms`, plus w_intra, w_inter: the terms' weights.

    Returns:
        A scalar, float32 (float64 for float64 features). NaN/Inf features raise on CPU tensors;
        on a GPU (where raising would cost a host synchronisation) the loss is NaN instead, and a
        label outside [0, num_classes) that is not ignored fails a device-side assertion (the
        training loop checks labels on the CPU before they reach the GPU).
    """
    name = _checked_backend(feats, labels, num_classes, delta_v, delta_d, backend)
    if name in FUSED_OPS:
        return _fused(feats, labels, num_classes, delta_v, delta_d, w_intra, w_inter, ignore_index, name)[0]
    terms = _composed_terms(feats, labels, num_classes, delta_v, delta_d, ignore_index, name)
    return reference.weighted_loss(terms, w_intra, w_inter)
