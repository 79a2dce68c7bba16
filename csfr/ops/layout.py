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


class CacState:
    """Offsets into the fused cac_loss op's state buffer: kernels/fused_state.h's CacState, which is its one
    home and says what each part holds (the Triton backend fills the same layout as the C++ ones; a test holds
    the totals equal and the parts alike)."""

    def __init__(self, b: int, d: int, n: int, k: int):
        self.B, self.D, self.N, self.K = b, d, n, k
        bk, bkd = b * k, b * k * d
        self.sums, self.wsum, self.counts = 0, bkd, 2 * bkd
        self.hinge = self.counts + bk
        self.wcount = self.hinge + bk
        self.flags = self.wcount + bk
        self.ticket = self.flags + 2
        self.cleared = self.ticket + 1
        self.coef = self.cleared
        self.a = self.coef + b * n
        self.g_inter = self.a + bk
        self.row_intra = self.g_inter + bkd
        self.row_inter = self.row_intra + bk
        self.present = self.row_inter + bk
        self.scale = self.present + b
        self.total = self.scale + 2


class CentroidState:
    """Offsets into the fused class_centroids op's state: kernels/fused_state.h's CentroidState."""

    def __init__(self, b: int, d: int, k: int):
        self.B, self.D, self.K = b, d, k
        self.sums, self.counts = 0, b * k * d
        self.flag = self.counts + b * k
        self.ticket = self.flag + 1
        self.total = self.ticket + b


FLAG_BAD_LABEL, FLAG_NON_FINITE = 0, 1  # flags[] entries, as kFlagBadLabel and kFlagNonFinite


def cac_state_size(b: int, d: int, n: int, k: int) -> int:
    """Elements of the fused cac_loss op's state buffer (CacState.total)."""
    return CacState(b, d, n, k).total


def centroid_state_size(b: int, d: int, k: int) -> int:
    """Elements of the fused class_centroids op's state (CentroidState.total)."""
    return CentroidState(b, d, k).total
