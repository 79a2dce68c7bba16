"""The fused class_centroids in Triton: the C++ op's structure and state (csfr.ops.layout.CentroidState).

Forward: one clear of the state, segment_sum into it (flagging bad labels), `_means_kernel` (the means
in the features' dtype and the int64 counts; NaN means if a label was out of range, as a GPU cannot
raise without a host synchronisation). Backward: `_grad_kernel`, dF_i = grad_mu[y_i] / n_{y_i}, reading
the upstream gradient at its strides (a broadcast or transposed gradient is not copied first).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from csfr.ops.layout import CentroidState, acc_dtype
from csfr.ops.triton.segment import TILE_CONFIGS, mean_scale, pixel_tile, segment_sum
from csfr.ops.triton.tuning import bucket, tl_acc


@triton.jit
def _means_kernel(st_ptr, counts_off, flag_off, mu_ptr, counts_ptr, D, K, ACC: tl.constexpr, BLOCK_K: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """Program (b, j): the means of classes [j BLOCK_K, (j + 1) BLOCK_K) of image b."""
    b = tl.program_id(0).to(tl.int64)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    n = tl.load(st_ptr + counts_off + b * K + ks, mask=ks < K, other=0)
    inv = 1.0 / tl.maximum(n.to(ACC), 1.0)
    inv = tl.where(tl.load(st_ptr + flag_off) != 0, float("nan"), inv)
    tl.store(counts_ptr + b * K + ks, n.to(tl.int64), mask=ks < K)
    for d0 in range(0, D, BLOCK_D):
        ch = d0 + tl.arange(0, BLOCK_D)
        mask = (ks[:, None] < K) & (ch[None, :] < D)
        offs = (b * K + ks[:, None]) * D + ch[None, :]
        s = tl.load(st_ptr + offs, mask=mask, other=0)
        tl.store(mu_ptr + offs, (s * inv[:, None]).to(mu_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=TILE_CONFIGS, key=["d_bucket", "n_bucket", "k_bucket"])
@triton.jit
def _grad_kernel(grad_ptr, s_b, s_k, s_d, labels_ptr, st_ptr, counts_off, out_ptr, D, N, K, ignore_index,
                 d_bucket, n_bucket, k_bucket, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b, pix, y, valid = pixel_tile(labels_ptr, N, K, ignore_index, BLOCK_N)
    ch = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    y = tl.where(valid, y, 0)
    inv = mean_scale(st_ptr + counts_off, b, y, K, valid, True, ACC)
    mask = (ch[:, None] < D) & valid[None, :]
    grad = tl.load(grad_ptr + b * s_b + y[None, :] * s_k + ch[:, None] * s_d, mask=mask, other=0).to(ACC)
    offs = (b * D + ch[:, None]) * N + pix[None, :]
    tl.store(out_ptr + offs, (grad * inv[None, :]).to(out_ptr.dtype.element_ty),
             mask=(ch[:, None] < D) & (pix[None, :] < N))


def class_centroids_fused(feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
                          ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mu [B,K,D] in feats' dtype, counts [B,K] int64, state) of feats [B,D,N] contiguous, int64 labels [B,N]."""
    b, d, _ = feats.shape
    k = num_classes
    L = CentroidState(b, d, k)
    st = feats.new_zeros(L.total, dtype=acc_dtype(feats.dtype))
    mu = feats.new_empty(b, k, d)
    counts = feats.new_empty(b, k, dtype=torch.long)
    if b == 0:
        return mu, counts, st
    segment_sum(feats, labels, k, ignore_index, out=(st[:L.counts].view(b, k, d), st[L.counts:L.flag].view(b, k)),
                flag=st[L.flag:L.ticket])
    block_k = min(bucket(k), 16)
    _means_kernel[(b, triton.cdiv(k, block_k))](st, L.counts, L.flag, mu, counts, d, k, ACC=tl_acc(feats.dtype),
                                                BLOCK_K=block_k, BLOCK_D=min(bucket(d), 64), num_warps=4)
    return mu, counts, st


def class_centroids_fused_backward(grad_mu: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor,
                                   state: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """dF [B,D,N]: each counted pixel gets grad_mu [B,K,D] (any strides) of its class over the class count."""
    b, d, n = feats.shape
    k = num_classes
    out = torch.empty_like(feats)
    if out.numel() == 0:
        return out
    grid = lambda meta: (b, triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(d, meta["BLOCK_D"]))
    _grad_kernel[grid](grad_mu, *grad_mu.stride(), labels, state, CentroidState(b, d, k).counts, out, d, n, k,
                       ignore_index, bucket(d), bucket(n), bucket(k), ACC=tl_acc(feats.dtype))
    return out
