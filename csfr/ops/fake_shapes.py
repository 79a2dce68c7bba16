"""Output shapes and dtypes of the kernel ops and fused ops (docs/kernels.md), without data: the fake (meta)
kernels of every op library with those schemas, the C++ one (csfr.ops.kernel_fakes registers them) and
Triton's (csfr.ops.triton.library). Imports nothing of csfr but the layouts."""

from __future__ import annotations

import torch

from csfr.ops.layout import acc_dtype, cac_state_size, centroid_state_size


def _acc(feats, *shape):
    return feats.new_empty(shape, dtype=acc_dtype(feats.dtype))


def _segment_sum(feats, labels, num_classes, ignore_index):
    b, d, _ = feats.shape
    return _acc(feats, b, num_classes, d), _acc(feats, b, num_classes)


def _cac_pixel_pass(feats, labels, mu, delta_v, ignore_index):
    b, d, n = feats.shape
    k = mu.shape[1]
    return _acc(feats, b, n), _acc(feats, b, k), _acc(feats, b, k, d), _acc(feats, b, k)


def _pixel_grad(feats, labels, g, ignore_index, mu, coef, a):
    return torch.empty_like(feats)


def _cac_loss(feats, labels, num_classes, delta_v, delta_d, w_intra, w_inter, ignore_index):
    b, d, n = feats.shape
    return _acc(feats), _acc(feats, 2), _acc(feats, cac_state_size(b, d, n, num_classes))


def _cac_loss_backward(grad_loss, grad_terms, feats, labels, state, num_classes, w_intra, w_inter, ignore_index):
    return torch.empty_like(feats)


def _class_centroids_fused(feats, labels, num_classes, ignore_index):
    b, d, _ = feats.shape
    return (feats.new_empty(b, num_classes, d), feats.new_empty(b, num_classes, dtype=torch.long),
            _acc(feats, centroid_state_size(b, d, num_classes)))


def _class_centroids_fused_backward(grad_mu, feats, labels, state, num_classes, ignore_index):
    return torch.empty_like(feats)


def _blend_forward(x, s, g):
    return torch.empty_like(x)


def _blend_backward(grad_z, x, s, g):
    return torch.empty_like(x), torch.empty_like(s), torch.empty_like(g)


FAKES = {"segment_sum": _segment_sum, "cac_pixel_pass": _cac_pixel_pass, "pixel_grad": _pixel_grad,
         "cac_loss": _cac_loss, "cac_loss_backward": _cac_loss_backward,
         "class_centroids_fused": _class_centroids_fused,
         "class_centroids_fused_backward": _class_centroids_fused_backward,
         "blend_forward": _blend_forward, "blend_backward": _blend_backward}
