"""class_centroids: per-image class means of a feature map, as a torch.library custom op.

On the C++ backends (cpu, cuda, cuda_emulated) it is one op with its backward in C++,
csfr::class_centroids_fused (docs/kernels.md, "The fused ops"); Triton composes it below from
segment_sum and pixel_grad, whose `feature_grad` op cac_loss's Triton form uses too."""

from __future__ import annotations

import torch
from torch import Tensor

from csfr.ops import checks, reference
from csfr.ops.checks import check_features_labels, check_label_values
from csfr.ops.dispatch import FUSED_OPS, fused, kernels, resolve
from csfr.ops.layout import IGNORE_INDEX, acc_dtype, flat_features, flat_labels


@torch.library.custom_op("csfr::feature_grad", mutates_args=())
def pixel_grad(feats: Tensor, labels: Tensor, g: Tensor, ignore_index: int, backend: str,
               mu: Tensor | None, coef: Tensor | None, a: Tensor | None) -> Tensor:
    """dF_i = a[y_i] * coef_i * (f_i - mu[y_i]) + g[y_i] (the first term only if given).

    feats [B,D,N] contiguous, labels [B,*sp]; without the direct term only feats' shape is used.
    """
    return kernels(backend).pixel_grad(feats, flat_labels(labels), g, ignore_index, mu, coef, a)


@pixel_grad.register_fake
def _(feats, labels, g, ignore_index, backend, mu, coef, a):
    return feats.new_empty(feats.shape)


@torch.library.custom_op("csfr::class_centroids", mutates_args=())
def _centroids(feats: Tensor, labels: Tensor, num_classes: int, ignore_index: int,
               backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """feats [B,D,N] contiguous (see `flat_features`), labels [B,*sp]. Also returns 1 / max(n, 1)
    [B,K,1] (accumulation dtype) for the backward, which then needs no operation of its own on the counts."""
    check_label_values(labels, num_classes, ignore_index, "class_centroids")
    sums, counts = kernels(backend).segment_sum(feats, flat_labels(labels), num_classes, ignore_index)
    inv_counts = counts.clamp_min(1).reciprocal().unsqueeze(-1)
    return (sums * inv_counts).to(feats.dtype), counts.long(), inv_counts


@_centroids.register_fake
def _(feats, labels, num_classes, ignore_index, backend):
    b, d = feats.shape[:2]
    return (feats.new_empty(b, num_classes, d), feats.new_empty(b, num_classes, dtype=torch.long),
            feats.new_empty(b, num_classes, 1, dtype=acc_dtype(feats.dtype)))


def _setup_context(ctx, inputs, output):
    feats, labels, _, ignore_index, backend = inputs
    # feats is saved for its shape and dtype only (the kernel does not read it): it is the flat
    # view or copy made by `flat_features`, so nothing is copied again in the backward
    ctx.save_for_backward(feats, labels, output[2])
    ctx.ignore_index, ctx.backend = ignore_index, backend
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the counts


def _backward(ctx, grad_mu, *_):
    if grad_mu is None:  # grads are not materialised (setup_context): none reached mu
        return None, None, None, None, None
    feats, labels, inv_counts = ctx.saved_tensors
    g = grad_mu.to(inv_counts.dtype) * inv_counts
    # contiguous: grad_mu may come strided (a transposed use of mu), the kernels index g densely
    dfeats = pixel_grad(feats, labels, g.contiguous(), ctx.ignore_index, ctx.backend, None, None, None)
    return dfeats, None, None, None, None


_centroids.register_autograd(_backward, setup_context=_setup_context)


def class_centroids(feats: Tensor, labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX,
                    backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Per-image class means of a feature map (docs/design.md, operator 1).

    Args:
        feats: [B, D, *spatial] float32, float16, bfloat16 or float64; any memory layout.
        labels: [B, *spatial], any integer dtype (uint8 ... int64), values in [0, num_classes) or
            `ignore_index` (anything else is refused before a kernel runs).
        num_classes: K.
        ignore_index: the label of pixels that count nowhere (default 255).
        backend: "auto", "torch", "cpu", "cuda" or "triton" (or the CSFR_BACKEND variable).

    Returns:
        (mu [B, K, D] in the features' dtype, n [B, K] int64 pixel counts). Absent classes get
        mu = 0 and n = 0. Differentiable in feats.
    """
    check_features_labels(feats, labels, num_classes, "class_centroids")
    name = resolve(backend, feats.device)
    if name == "torch":
        if not torch.compiler.is_compiling():
            check_label_values(labels, num_classes, ignore_index, "class_centroids")
        return reference.class_centroids(feats, labels, num_classes, ignore_index)
    if name in FUSED_OPS:  # one op (two launches forward, one backward on a GPU); the CUDA code path checks
        # labels in its kernel (a device-side assertion), the CPU on the host where it may read them
        if checks.fused_host_checks(name, labels):
            check_label_values(labels, num_classes, ignore_index, "class_centroids")
        op = fused(name, "class_centroids_fused")
        mu, counts, _ = op(flat_features(feats), flat_labels(labels), num_classes, ignore_index)
        return mu, counts
    mu, counts, _ = _centroids(flat_features(feats), labels, num_classes, ignore_index, name)
    return mu, counts
