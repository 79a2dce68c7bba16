"""class_centroids: per-image class means of a feature map, as a torch.library custom op.

On every kernel backend it is one op, `class_centroids_fused` of the backend's library (docs/kernels.md,
"The fused ops"), with a backward op of its own; the torch backend is the reference."""

from __future__ import annotations

import torch
from torch import Tensor

from csfr.ops import checks, reference
from csfr.ops.checks import check_features_labels, check_label_values
from csfr.ops.dispatch import fused, resolve
from csfr.ops.layout import IGNORE_INDEX, flat_features, flat_labels


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
    # one op (two launches forward, one backward on a GPU); the CUDA code path checks labels in its kernel
    # (a device-side assertion; Triton on a GPU makes the means NaN), CPU tensors on the host where it may read them
    if checks.fused_host_checks(name, labels):
        check_label_values(labels, num_classes, ignore_index, "class_centroids")
    mu, counts, _ = fused(name, "class_centroids_fused")(flat_features(feats), flat_labels(labels), num_classes,
                                                         ignore_index)
    return mu, counts
