"""What every operator and backend shares about tensors: the accumulation dtype and the flat
[B, D, N] / [B, N] layouts the kernels take. Imports nothing of csfr, so the backends (Triton's
included) can use it without importing the operators that dispatch to them."""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = 255  # the label of pixels that count nowhere: every default in csfr, and the datasets' value


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


def cac_state_size(b: int, d: int, n: int, k: int) -> int:
    """Elements of the fused cac_loss op's state buffer: kernels/fused_state.h's CacState.total(), which
    is its one home (a test holds the two equal)."""
    return 3 * b * k * d + 6 * b * k + b * n + b + 5


def centroid_state_size(b: int, d: int, k: int) -> int:
    """Elements of the fused class_centroids op's state: kernels/fused_state.h's CentroidState.total()."""
    return b * k * d + b * k + 1 + b
