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


def flatten(feats: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Features [B,D,*sp] -> contiguous [B,D,N]; labels [B,*sp] -> contiguous int64 [B,N]."""
    b, d = feats.shape[:2]
    return feats.reshape(b, d, -1).contiguous(), labels.reshape(b, -1).long().contiguous()


@torch.library.custom_op("csfr::feature_grad", mutates_args=())
def pixel_grad(feats: Tensor, labels: Tensor, g: Tensor, ignore_index: int, backend: str,
               mu: Tensor | None, coef: Tensor | None, a: Tensor | None) -> Tensor:
    """dF_i = a[y_i] * coef_i * (f_i - mu[y_i]) + g[y_i] (the first term only if given)."""
    f, y = flatten(feats, labels)
    return kernels(backend).pixel_grad(f, y, g, ignore_index, mu, coef, a).reshape(feats.shape)


@pixel_grad.register_fake
def _(feats, labels, g, ignore_index, backend, mu, coef, a):
    return feats.new_empty(feats.shape)


@torch.library.custom_op("csfr::class_centroids", mutates_args=())
def _centroids(feats: Tensor, labels: Tensor, num_classes: int, ignore_index: int,
               backend: str) -> tuple[Tensor, Tensor]:
    check_label_values(labels, num_classes, ignore_index, "class_centroids")
    sums, counts = kernels(backend).segment_sum(*flatten(feats, labels), num_classes, ignore_index)
    mu = sums / counts.clamp_min(1).unsqueeze(-1)
    return mu.to(feats.dtype), counts.long()


@_centroids.register_fake
def _(feats, labels, num_classes, ignore_index, backend):
    b, d = feats.shape[:2]
    return feats.new_empty(b, num_classes, d), feats.new_empty(b, num_classes, dtype=torch.long)


def _setup_context(ctx, inputs, output):
    feats, labels, _, ignore_index, backend = inputs
    ctx.save_for_backward(feats, labels, output[1])
    ctx.ignore_index, ctx.backend = ignore_index, backend


def _backward(ctx, grad_mu, _grad_counts):
    feats, labels, counts = ctx.saved_tensors
    acc = acc_dtype(feats.dtype)
    g = grad_mu.to(acc) / counts.clamp_min(1).unsqueeze(-1).to(acc)
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
    return _centroids(feats, labels, num_classes, ignore_index, name)
