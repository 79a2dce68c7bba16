"""Triton kernels for the label-segmented operators: segment_sum, cac_pixel_pass, pixel_grad.

One program owns a tile of pixels of one image. Segmentation labels are spatially coherent,
so most tiles hold a single class: such a tile reduces in registers and issues one atomic
per channel; a mixed tile falls back to one atomic per element. Either way nothing of size
N x K is formed. cac_pixel_pass reads its tile twice (norm, then weighted sum); the second
read is served from L1/L2, so the operator stays at two passes over the features in DRAM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from csfr.ops.triton.tuning import acc_dtype, configs, tl_acc

_TILE_CONFIGS = configs([{"BLOCK_N": n, "BLOCK_D": d} for n in (32, 64, 128) for d in (32, 64)],
                        {"BLOCK_N": 16, "BLOCK_D": 16})


@triton.jit
def _pixel_tile(labels_ptr, N, ignore_index, BLOCK_N: tl.constexpr):
    """This program's image b (int64: offsets may pass 2**31 on large batches), its pixel indices,
    their labels and which of them count."""
    b = tl.program_id(0).to(tl.int64)
    pix = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    y = tl.load(labels_ptr + b * N + pix, mask=pix < N, other=ignore_index)
    return b, pix, y, (pix < N) & (y != ignore_index)


@triton.jit
def _tile_class(y, valid):
    """The tile's class if every valid pixel shares one (else -1), so it can reduce in registers."""
    lo = tl.min(tl.where(valid, y, 2147483647), 0)
    hi = tl.max(tl.where(valid, y, -1), 0)
    return tl.where(lo == hi, lo, -1)


@triton.jit
def _add_by_class(dst_ptr, base, y, valid, uniform, values, ACC: tl.constexpr):
    """dst[base + y_i] += values_i over the valid pixels of a tile."""
    if uniform >= 0:
        tl.atomic_add(dst_ptr + base + uniform, tl.sum(tl.where(valid, values, 0).to(ACC), 0))
    else:
        tl.atomic_add(dst_ptr + base + y, values.to(ACC), mask=valid)


@triton.jit
def _add_rows_by_class(dst_ptr, base, ch, D, y, valid, uniform, values, ACC: tl.constexpr):
    """dst[base + y_i * D + ch] += values[ch, i] over the valid pixels (values [BLOCK_D, BLOCK_N])."""
    if uniform >= 0:
        total = tl.sum(tl.where(valid[None, :], values, 0).to(ACC), 1)
        tl.atomic_add(dst_ptr + base + uniform * D + ch, total, mask=ch < D)
    else:
        tl.atomic_add(dst_ptr + base + y[None, :] * D + ch[:, None], values.to(ACC),
                      mask=(ch[:, None] < D) & valid[None, :])


@triton.autotune(configs=_TILE_CONFIGS, key=["D", "N", "K"], reset_to_zero=["sums_ptr", "counts_ptr"])
@triton.jit
def _segment_sum_kernel(feats_ptr, labels_ptr, sums_ptr, counts_ptr, D, N, K, ignore_index,
                        ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b, pix, y, valid = _pixel_tile(labels_ptr, N, ignore_index, BLOCK_N)
    uniform = _tile_class(y, valid)
    y = tl.where(valid, y, 0)
    _add_by_class(counts_ptr, b * K, y, valid, uniform, tl.where(valid, 1.0, 0.0), ACC)
    for d0 in range(0, D, BLOCK_D):
        ch = d0 + tl.arange(0, BLOCK_D)
        mask = (ch[:, None] < D) & valid[None, :]
        f = tl.load(feats_ptr + (b * D + ch[:, None]) * N + pix[None, :], mask=mask, other=0).to(ACC)
        _add_rows_by_class(sums_ptr, b * K * D, ch, D, y, valid, uniform, f, ACC)


def segment_sum(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int):
    b, d, n = feats.shape
    acc = acc_dtype(feats.dtype)
    sums = feats.new_zeros(b, num_classes, d, dtype=acc)
    counts = feats.new_zeros(b, num_classes, dtype=acc)
    if b * n:
        grid = lambda meta: (b, triton.cdiv(n, meta["BLOCK_N"]))
        _segment_sum_kernel[grid](feats, labels, sums, counts, d, n, num_classes, ignore_index,
                                  ACC=tl_acc(feats.dtype))
    return sums, counts


@triton.autotune(configs=_TILE_CONFIGS, key=["D", "N", "K"],
                 reset_to_zero=["hinge_ptr", "wsum_ptr", "wcount_ptr"])
@triton.jit
def _cac_pixel_pass_kernel(feats_ptr, labels_ptr, mu_ptr, delta_v, coef_ptr, hinge_ptr, wsum_ptr, wcount_ptr,
                           D, N, K, ignore_index, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b, pix, y, valid = _pixel_tile(labels_ptr, N, ignore_index, BLOCK_N)
    uniform = _tile_class(y, valid)
    y = tl.where(valid, y, 0)
    mu_row = (b * K + y) * D
    sq = tl.zeros([BLOCK_N], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        ch = d0 + tl.arange(0, BLOCK_D)
        mask = (ch[:, None] < D) & valid[None, :]
        f = tl.load(feats_ptr + (b * D + ch[:, None]) * N + pix[None, :], mask=mask, other=0).to(ACC)
        m = tl.load(mu_ptr + mu_row[None, :] + ch[:, None], mask=mask, other=0)
        sq += tl.sum((f - m) * (f - m), 0)
    r = tl.sqrt(sq)
    h = tl.maximum(r - delta_v, 0.0)
    h = tl.where(valid, h, 0.0)
    c = tl.where(r > 0, 2 * h / tl.where(r > 0, r, 1.0), 0.0)
    tl.store(coef_ptr + b * N + pix, c, mask=pix < N)
    _add_by_class(hinge_ptr, b * K, y, valid, uniform, h * h, ACC)
    _add_by_class(wcount_ptr, b * K, y, valid, uniform, c, ACC)
    if tl.max(c, 0) > 0:  # tiles whose pixels all lie within the margin add nothing to wsum
        for d0 in range(0, D, BLOCK_D):
            ch = d0 + tl.arange(0, BLOCK_D)
            mask = (ch[:, None] < D) & valid[None, :]
            f = tl.load(feats_ptr + (b * D + ch[:, None]) * N + pix[None, :], mask=mask, other=0).to(ACC)
            _add_rows_by_class(wsum_ptr, b * K * D, ch, D, y, valid, uniform, c[None, :] * f, ACC)


def cac_pixel_pass(feats, labels, mu, delta_v: float, ignore_index: int):
    b, d, n = feats.shape
    k = mu.shape[1]
    acc = acc_dtype(feats.dtype)
    coef = feats.new_zeros(b, n, dtype=acc)
    hinge = feats.new_zeros(b, k, dtype=acc)
    wsum = feats.new_zeros(b, k, d, dtype=acc)
    wcount = feats.new_zeros(b, k, dtype=acc)
    if b * n:
        grid = lambda meta: (b, triton.cdiv(n, meta["BLOCK_N"]))
        _cac_pixel_pass_kernel[grid](feats, labels, mu, float(delta_v), coef, hinge, wsum, wcount, d, n, k,
                                     ignore_index, ACC=tl_acc(feats.dtype))
    return coef, hinge, wsum, wcount


@triton.autotune(configs=_TILE_CONFIGS, key=["D", "N", "K", "DIRECT"])
@triton.jit
def _pixel_grad_kernel(feats_ptr, labels_ptr, g_ptr, mu_ptr, coef_ptr, a_ptr, out_ptr, D, N, K, ignore_index,
                       DIRECT: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b, pix, y, valid = _pixel_tile(labels_ptr, N, ignore_index, BLOCK_N)
    ch = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    y = tl.where(valid, y, 0)
    mask = (ch[:, None] < D) & valid[None, :]
    offs = (b * D + ch[:, None]) * N + pix[None, :]
    row = (b * K + y[None, :]) * D + ch[:, None]
    grad = tl.load(g_ptr + row, mask=mask, other=0)
    if DIRECT:
        f = tl.load(feats_ptr + offs, mask=mask, other=0).to(ACC)
        m = tl.load(mu_ptr + row, mask=mask, other=0)
        c = tl.load(coef_ptr + b * N + pix, mask=valid, other=0)
        a = tl.load(a_ptr + b * K + y, mask=valid, other=0)
        grad += (a * c)[None, :] * (f - m)
    tl.store(out_ptr + offs, grad.to(out_ptr.dtype.element_ty), mask=(ch[:, None] < D) & (pix[None, :] < N))


def pixel_grad(feats, labels, g, ignore_index: int, mu=None, coef=None, a=None):
    b, d, n = feats.shape
    out = torch.empty_like(feats)
    if out.numel():
        direct = mu is not None
        grid = lambda meta: (b, triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(d, meta["BLOCK_D"]))
        _pixel_grad_kernel[grid](feats, labels, g, mu if direct else g, coef if direct else g,
                                 a if direct else g, out, d, n, g.shape[1], ignore_index,
                                 DIRECT=direct, ACC=tl_acc(feats.dtype))
    return out
