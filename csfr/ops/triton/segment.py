"""Triton kernels for the label-segmented operators: segment_sum, cac_pixel_pass, pixel_grad.

One program owns a tile of pixels of one image. Segmentation labels are spatially coherent,
so most tiles hold a single class: such a tile reduces in registers and issues one atomic
per channel; a mixed tile falls back to one atomic per element. Either way nothing of size
N x K is formed. cac_pixel_pass reads its tile twice (norm, then weighted sum); the second
read is served from L1/L2, so the operator stays at two passes over the features in DRAM.

Deterministic mode (torch.use_deterministic_algorithms(True)) replaces the atomics: one
program per (image, channel block) walks the pixel tiles in order and accumulates the class
sums as a one-hot matrix product in registers (`_class_sums_kernel`), with fixed block sizes.
Labels outside [0, K) are treated as ignored. For the fused ops (csfr.ops.triton.cac_loss and
.centroids) the kernels also write into given buffers (parts of the op's state), segment_sum sets a flag
when it meets a label outside [0, K) that is not ignore_index, and the means may come as the class sums
with their counts (`counts=`): each mean is then formed where read, sums / max(n, 1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from csfr.ops.triton.tuning import acc_dtype, bucket, configs, deterministic, tl_acc

TILE_BLOCKS = [{"BLOCK_N": n, "BLOCK_D": d} for n in (32, 64, 128) for d in (32, 64)]
TILE_CONFIGS = configs(TILE_BLOCKS, {"BLOCK_N": 16, "BLOCK_D": 16})
_TILE_KEY = ["d_bucket", "n_bucket", "k_bucket"]
# the fixed tile of the deterministic path (autotuning could pick another summation order per run)
DETERMINISTIC_TILE = {"BLOCK_N": 32, "BLOCK_D": 32}


@triton.jit
def pixel_tile(labels_ptr, N, K, ignore_index, BLOCK_N: tl.constexpr):
    """This program's image b (int64: offsets may pass 2**31 on large batches), its pixel indices,
    their labels and which of them count."""
    b = tl.program_id(0).to(tl.int64)
    pix = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    y = tl.load(labels_ptr + b * N + pix, mask=pix < N, other=ignore_index)
    return b, pix, y, (pix < N) & (y != ignore_index) & (y >= 0) & (y < K)


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


@triton.jit
def _flag_bad_labels(flag_ptr, pix, y, N, K, ignore_index):
    """flag[0] = 1 if a label of the tile is outside [0, K) and is not ignore_index (each writer stores 1)."""
    bad = (pix < N) & (y != ignore_index) & ((y < 0) | (y >= K))
    if tl.max(bad.to(tl.int32), 0) > 0:
        tl.store(flag_ptr, 1.0)


@triton.jit
def mean_scale(counts_ptr, b, y, K, valid, FROM_SUMS: tl.constexpr, ACC: tl.constexpr):
    """The factor turning a row of mu into the class mean: 1 / max(n_y, 1) when mu holds the class sums
    (FROM_SUMS), else 1."""
    if FROM_SUMS:
        n = tl.load(counts_ptr + b * K + y, mask=valid, other=1).to(ACC)
        return 1.0 / tl.maximum(n, 1.0)
    return tl.full(y.shape, 1.0, ACC)


@triton.autotune(configs=TILE_CONFIGS, key=_TILE_KEY, reset_to_zero=["sums_ptr", "counts_ptr"])
@triton.jit
def _segment_sum_kernel(feats_ptr, labels_ptr, sums_ptr, counts_ptr, flag_ptr, D, N, K, ignore_index,
                        d_bucket, n_bucket, k_bucket, FLAG: tl.constexpr,
                        ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b, pix, y, valid = pixel_tile(labels_ptr, N, K, ignore_index, BLOCK_N)
    if FLAG:
        _flag_bad_labels(flag_ptr, pix, y, N, K, ignore_index)
    uniform = _tile_class(y, valid)
    y = tl.where(valid, y, 0)
    _add_by_class(counts_ptr, b * K, y, valid, uniform, tl.where(valid, 1.0, 0.0), ACC)
    for d0 in range(0, D, BLOCK_D):
        ch = d0 + tl.arange(0, BLOCK_D)
        mask = (ch[:, None] < D) & valid[None, :]
        f = tl.load(feats_ptr + (b * D + ch[:, None]) * N + pix[None, :], mask=mask, other=0).to(ACC)
        _add_rows_by_class(sums_ptr, b * K * D, ch, D, y, valid, uniform, f, ACC)


@triton.jit
def _class_sums_kernel(src_ptr, labels_ptr, coef_ptr, mu_ptr, mu_counts_ptr, out_ptr, counts_ptr, flag_ptr, D, N,
                       K, ignore_index, WEIGHTED: tl.constexpr, FROM_SUMS: tl.constexpr, COUNT: tl.constexpr,
                       FLAG: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """Deterministic class sums of this program's channel block: out[b, k, ch] = sum_{i in k} src_i[ch]
    (WEIGHTED: coef_i (src_i[ch] - mu_k[ch]), mu from sums and mu_counts if FROM_SUMS), counts[b, k] = n_k
    (COUNT; with FLAG, bad labels flagged too). The pixel tiles are visited in order and summed as
    onehot [K, tile] @ src [tile, ch]: no atomics, a fixed order."""
    b = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_K, BLOCK_D], dtype=ACC)
    cnt = tl.zeros([BLOCK_K], dtype=ACC)
    for n0 in range(0, N, BLOCK_N):
        pix = n0 + tl.arange(0, BLOCK_N)
        y = tl.load(labels_ptr + b * N + pix, mask=pix < N, other=ignore_index)
        if FLAG:  # noqa: SIM102 (FLAG is a compile-time constant; the program id is not)
            if tl.program_id(1) == 0:
                _flag_bad_labels(flag_ptr, pix, y, N, K, ignore_index)
        valid = (pix < N) & (y != ignore_index) & (y >= 0) & (y < K)
        y = tl.where(valid, y, 0)
        mask = valid[:, None] & (ch[None, :] < D)
        f = tl.load(src_ptr + (b * D + ch[None, :]) * N + pix[:, None], mask=mask, other=0).to(ACC)
        if WEIGHTED:
            scale = mean_scale(mu_counts_ptr, b, y, K, valid, FROM_SUMS, ACC)
            m = tl.load(mu_ptr + (b * K + y[:, None]) * D + ch[None, :], mask=mask, other=0) * scale[:, None]
            c = tl.load(coef_ptr + b * N + pix, mask=valid, other=0)
            f = c[:, None] * (f - m)
        onehot = tl.where((ks[:, None] == y[None, :]) & valid[None, :], 1.0, 0.0).to(ACC)
        acc += tl.dot(onehot, f, input_precision="ieee", out_dtype=ACC)
        if COUNT:
            cnt += tl.sum(onehot, 1)
    tl.store(out_ptr + (b * K + ks[:, None]) * D + ch[None, :], acc, mask=(ks[:, None] < K) & (ch[None, :] < D))
    if COUNT:  # noqa: SIM102 (COUNT is a compile-time constant; the program id is not)
        if tl.program_id(1) == 0:
            tl.store(counts_ptr + b * K + ks, cnt, mask=ks < K)


def _class_sums(src, labels, k: int, ignore_index: int, coef=None, mu=None, mu_counts=None, counts=None,
                flag=None, out=None):
    """Launches `_class_sums_kernel`: [B,K,D] class sums of src [B,D,N] (weighted if coef and mu), into out
    if given."""
    b, d, n = src.shape
    if out is None:
        out = src.new_empty(b, k, d, dtype=acc_dtype(src.dtype))
    block_k = bucket(max(k, 16))
    block_d = max(16, min(32, 8192 // block_k))  # keeps the [K, D] accumulator within registers
    weighted = coef is not None
    _class_sums_kernel[(b, triton.cdiv(d, block_d))](
        src, labels, coef if weighted else out, mu if weighted else out,
        mu_counts if mu_counts is not None else out, out, counts if counts is not None else out,
        flag if flag is not None else out, d, n, k, ignore_index, WEIGHTED=weighted, FROM_SUMS=mu_counts is not None,
        COUNT=counts is not None, FLAG=flag is not None, ACC=tl_acc(src.dtype), BLOCK_N=32, BLOCK_D=block_d,
        BLOCK_K=block_k)
    return out


def segment_sum(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int, *,
                out: tuple[torch.Tensor, torch.Tensor] | None = None, flag: torch.Tensor | None = None):
    """Class sums [B,K,D] and counts [B,K] of feats [B,D,N] by labels [B,N] (the kernel contract).
    out: zeroed (sums, counts) buffers to fill instead of new ones; flag: a [1] buffer set to 1 if a label is
    outside [0, K) and not ignore_index."""
    b, d, n = feats.shape
    acc = acc_dtype(feats.dtype)
    if out is None:
        out = feats.new_zeros(b, num_classes, d, dtype=acc), feats.new_zeros(b, num_classes, dtype=acc)
    sums, counts = out
    if b * n == 0:
        return sums, counts
    if deterministic():
        _class_sums(feats, labels, num_classes, ignore_index, counts=counts, flag=flag, out=sums)
        return sums, counts
    grid = lambda meta: (b, triton.cdiv(n, meta["BLOCK_N"]))
    _segment_sum_kernel[grid](feats, labels, sums, counts, flag if flag is not None else counts, d, n, num_classes,
                              ignore_index, bucket(d), bucket(n), bucket(num_classes), FLAG=flag is not None,
                              ACC=tl_acc(feats.dtype))
    return sums, counts


@triton.autotune(configs=TILE_CONFIGS, key=_TILE_KEY, reset_to_zero=["hinge_ptr", "wsum_ptr", "wcount_ptr"])
@triton.jit
def _cac_pixel_pass_kernel(feats_ptr, labels_ptr, mu_ptr, mu_counts_ptr, delta_v, coef_ptr, hinge_ptr, wsum_ptr,
                           wcount_ptr, D, N, K, ignore_index, d_bucket, n_bucket, k_bucket, PER_PIXEL: tl.constexpr,
                           FROM_SUMS: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_D: tl.constexpr):
    """PER_PIXEL (the deterministic path): only coef and the per-pixel hinge h^2 (into hinge_ptr,
    [B, N]) are written; their class sums are taken by `_class_sums_kernel`. FROM_SUMS: mu holds the
    class sums, mu_counts their counts."""
    b, pix, y, valid = pixel_tile(labels_ptr, N, K, ignore_index, BLOCK_N)
    uniform = _tile_class(y, valid)
    y = tl.where(valid, y, 0)
    mu_row = (b * K + y) * D
    scale = mean_scale(mu_counts_ptr, b, y, K, valid, FROM_SUMS, ACC)[None, :]
    sq = tl.zeros([BLOCK_N], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        ch = d0 + tl.arange(0, BLOCK_D)
        mask = (ch[:, None] < D) & valid[None, :]
        f = tl.load(feats_ptr + (b * D + ch[:, None]) * N + pix[None, :], mask=mask, other=0).to(ACC)
        m = tl.load(mu_ptr + mu_row[None, :] + ch[:, None], mask=mask, other=0) * scale
        sq += tl.sum((f - m) * (f - m), 0)
    r = tl.sqrt(sq)
    h = tl.maximum(r - delta_v, 0.0)
    h = tl.where(valid, h, 0.0)
    c = tl.where(r > 0, 2 * h / tl.where(r > 0, r, 1.0), 0.0)
    tl.store(coef_ptr + b * N + pix, c, mask=pix < N)
    if PER_PIXEL:
        tl.store(hinge_ptr + b * N + pix, h * h, mask=pix < N)
    else:
        _add_by_class(hinge_ptr, b * K, y, valid, uniform, h * h, ACC)
        _add_by_class(wcount_ptr, b * K, y, valid, uniform, c, ACC)
        if tl.max(c, 0) > 0:  # tiles whose pixels all lie within the margin add nothing to wsum
            for d0 in range(0, D, BLOCK_D):
                ch = d0 + tl.arange(0, BLOCK_D)
                mask = (ch[:, None] < D) & valid[None, :]
                f = tl.load(feats_ptr + (b * D + ch[:, None]) * N + pix[None, :], mask=mask, other=0).to(ACC)
                m = tl.load(mu_ptr + mu_row[None, :] + ch[:, None], mask=mask, other=0) * scale
                # wsum from differences: sum coef (f - mu), exact under a large common offset
                _add_rows_by_class(wsum_ptr, b * K * D, ch, D, y, valid, uniform, c[None, :] * (f - m), ACC)


def cac_pixel_pass(feats, labels, mu, delta_v: float, ignore_index: int, *, counts: torch.Tensor | None = None,
                   out: tuple[torch.Tensor, ...] | None = None):
    """Per pixel coef [B,N]; per class hinge [B,K], wsum [B,K,D], wcount [B,K] (the kernel contract).
    counts: mu holds the class sums and these are their counts (the means are formed where read);
    out: (coef, hinge, wsum, wcount) buffers to fill, the last three zeroed."""
    b, d, n = feats.shape
    k = mu.shape[1]
    acc = acc_dtype(feats.dtype)
    if out is None:
        out = (feats.new_zeros(b, n, dtype=acc), feats.new_zeros(b, k, dtype=acc),
               feats.new_zeros(b, k, d, dtype=acc), feats.new_zeros(b, k, dtype=acc))
    coef, hinge, wsum, wcount = out
    if b * n == 0:
        return coef, hinge, wsum, wcount
    args = (d, n, k, ignore_index, bucket(d), bucket(n), bucket(k))
    mu_counts = counts if counts is not None else mu
    if deterministic():
        hinge_px = feats.new_zeros(b, n, dtype=acc)
        _cac_pixel_pass_kernel.fn[(b, triton.cdiv(n, DETERMINISTIC_TILE["BLOCK_N"]))](
            feats, labels, mu, mu_counts, float(delta_v), coef, hinge_px, wsum, wcount, *args, PER_PIXEL=True,
            FROM_SUMS=counts is not None, ACC=tl_acc(feats.dtype), **DETERMINISTIC_TILE)
        sums = _class_sums(torch.stack([hinge_px, coef], 1), labels, k, ignore_index)
        _class_sums(feats, labels, k, ignore_index, coef=coef, mu=mu, mu_counts=counts, out=wsum)
        hinge.copy_(sums[..., 0])
        wcount.copy_(sums[..., 1])
        return coef, hinge, wsum, wcount
    grid = lambda meta: (b, triton.cdiv(n, meta["BLOCK_N"]))
    _cac_pixel_pass_kernel[grid](feats, labels, mu, mu_counts, float(delta_v), coef, hinge, wsum, wcount, *args,
                                 PER_PIXEL=False, FROM_SUMS=counts is not None, ACC=tl_acc(feats.dtype))
    return coef, hinge, wsum, wcount


@triton.autotune(configs=TILE_CONFIGS, key=_TILE_KEY + ["DIRECT"])
@triton.jit
def _pixel_grad_kernel(feats_ptr, labels_ptr, g_ptr, mu_ptr, coef_ptr, a_ptr, out_ptr, D, N, K, ignore_index,
                       d_bucket, n_bucket, k_bucket, DIRECT: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b, pix, y, valid = pixel_tile(labels_ptr, N, K, ignore_index, BLOCK_N)
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
    """dF_i = a[y_i] coef_i (f_i - mu[y_i]) + g[y_i] (the first term only if mu, coef and a are given)."""
    b, d, n = feats.shape
    out = torch.empty_like(feats)
    if out.numel():
        direct = mu is not None
        k = g.shape[1]
        grid = lambda meta: (b, triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(d, meta["BLOCK_D"]))
        _pixel_grad_kernel[grid](feats, labels, g, mu if direct else g, coef if direct else g,
                                 a if direct else g, out, d, n, k, ignore_index, bucket(d), bucket(n), bucket(k),
                                 DIRECT=direct, ACC=tl_acc(feats.dtype))
    return out
