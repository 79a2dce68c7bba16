"""class_centroids: per-image class means of a feature map, as a torch.library custom op."""

from __future__ import annotations

import torch
from torch import Tensor

from csfr.ops import reference
from csfr.ops.checks import check_features_labels, check_label_values
from csfr.ops.dispatch import kernels, resolve


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def flat_features(feats: Tensor) -> Tensor:
    """Features [B,D,*sp] -> contiguous [B,D,N].

    The operators call it once, before their custom op, so channels-last or sliced features are
    copied at most once per call and the backward reuses the flat copy (autograd maps the [B,D,N]
    gradient back through the reshape).
    """
    return feats.reshape(*feats.shape[:2], -1).contiguous()


def flat_labels(labels: Tensor) -> Tensor:
    """Labels [B,*sp] -> contiguous int64 [B,N] (a view when they already are)."""
    return labels.reshape(labels.shape[0], -1).long().contiguous()


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


def class_centroids(feats: Tensor, labels: Tensor, num_classes: int, ignore_index: int = 255,
                    backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Per-image class means mu [B,K,D] (features' dtype) and pixel counts n [B,K] (int64).

    feats [B, D, *spatial], labels [B, *spatial] with values in [0, K) or ignore_index.
    Absent classes get mu = 0, n = 0. Differentiable in feats.
    """
    check_features_labels(feats, labels, num_classes, "class_centroids")
    name = resolve(backend, feats.device)
    if name == "torch":
        if not torch.compiler.is_compiling():
            check_label_values(labels, num_classes, ignore_index, "class_centroids")
        return reference.class_centroids(feats, labels, num_classes, ignore_index)
    mu, counts, _ = _centroids(flat_features(feats), labels, num_classes, ignore_index, name)
    return mu, counts
