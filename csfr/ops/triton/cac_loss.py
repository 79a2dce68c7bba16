"""The fused cac_loss in Triton: the C++ op's structure (kernels/cac_loss.cu) and state layout.

Forward, on one state buffer (csfr.ops.layout.CacState): one clear of its accumulated part, segment_sum
(flagging bad labels), cac_pixel_pass (the means formed from the sums where read), `_class_part_kernel`
(program (a, b) owns class a of image b: its distances to every class of the image, taken from
differences so that a large common offset cancels, the push gaps, the inter gradient's row a, the intra
factor, and its shares of the terms) and `_finish_kernel` (one program sums the shares in a fixed order
and writes the terms and the weighted loss, NaN if a class sum was not finite or a label was out of
range). Backward: `_grad_kernel`, one pass over the features, reading the upstream gradients from
device memory. Nothing is read back by the host, and no atomics run outside segment_sum and
cac_pixel_pass (which have deterministic paths), so the class part is reproducible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from csfr.ops.layout import FLAG_BAD_LABEL, FLAG_NON_FINITE, CacState, acc_dtype
from csfr.ops.triton.segment import TILE_CONFIGS, cac_pixel_pass, mean_scale, pixel_tile, segment_sum
from csfr.ops.triton.tuning import bucket, tl_acc

_NON_FINITE = tl.constexpr(FLAG_NON_FINITE)
CLASS_TILE = 8192  # elements of the class part's [classes, channels] tile (registers of one program)


def class_blocks(k: int, d: int) -> tuple[int, int]:
    """(BLOCK_K, BLOCK_D) of the class part: every class of an image in one tile, channels in chunks."""
    block_k = bucket(max(k, 2))
    return block_k, max(1, min(CLASS_TILE // block_k, 128, bucket(d)))


@triton.jit
def _mean_differences(sums, a, cs, partner, inv_a, inv_c, d0, D, BLOCK_D: tl.constexpr):
    """The channels [d0, d0 + BLOCK_D) of mu_a - mu_c for every class c of the tile (0 where c is no partner),
    from the class sums, and class a's own sums there."""
    ch = d0 + tl.arange(0, BLOCK_D)
    s_a = tl.load(sums + a * D + ch, mask=ch < D, other=0)
    mask = partner[:, None] & (ch[None, :] < D)
    m_c = tl.load(sums + cs[:, None] * D + ch[None, :], mask=mask, other=0) * inv_c[:, None]
    return tl.where(mask, (s_a * inv_a)[None, :] - m_c, 0.0), s_a


@triton.jit
def _class_part_kernel(st_ptr, counts_off, hinge_off, flags_off, a_off, g_off, row_intra_off, row_inter_off,
                       present_off, D, K, delta_d, ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    a = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    cs = tl.arange(0, BLOCK_K)
    cnt = tl.load(st_ptr + counts_off + b * K + cs, mask=cs < K, other=0)
    n = tl.sum(tl.where(cnt > 0, 1.0, 0.0).to(ACC), 0)  # classes present in image b
    inv_n = 1.0 / tl.maximum(n, 1.0)
    has_intra = tl.where(n >= 1.0, 1.0, 0.0).to(ACC)
    has_inter = tl.where(n >= 2.0, 1.0, 0.0).to(ACC)
    pairs = tl.maximum(n * (n - 1.0), 1.0)
    if a == 0:
        tl.store(st_ptr + present_off + b, n)
    sums = st_ptr + b * K * D  # the class sums come first in the state
    g = st_ptr + g_off + (b * K + a) * D
    n_a = tl.load(st_ptr + counts_off + b * K + a)
    row_intra = n * 0.0
    row_inter = n * 0.0
    factor = n * 0.0
    if n_a > 0:
        inv_a = 1.0 / tl.maximum(n_a, 1.0)
        inv_c = 1.0 / tl.maximum(cnt, 1.0)
        partner = (cs < K) & (cnt > 0) & (cs != a)
        # pass 1: squared distances to every class, from differences; and whether class a's sums are finite
        d2 = tl.zeros([BLOCK_K], dtype=ACC)
        bad = tl.zeros([BLOCK_D], dtype=tl.int32)
        for d0 in range(0, D, BLOCK_D):
            diff, s_a = _mean_differences(sums, a, cs, partner, inv_a, inv_c, d0, D, BLOCK_D)
            bad += tl.where(tl.abs(s_a) < float("inf"), 0, 1)  # NaN compares false too
            d2 += tl.sum(diff * diff, 1)
        if tl.max(bad, 0) > 0:
            tl.store(st_ptr + flags_off + _NON_FINITE, 1.0)
        dist = tl.sqrt(d2)
        gap = tl.where(partner, tl.maximum(2.0 * delta_d - dist, 0.0), 0.0)
        w = tl.where(partner & (dist > 0), gap / tl.where(dist > 0, dist, 1.0), 0.0)
        row_inter = tl.sum(gap * gap, 0) / pairs * has_inter
        row_intra = tl.load(st_ptr + hinge_off + b * K + a) * inv_a * inv_n * has_intra
        factor = has_intra * inv_n * inv_a
        # pass 2: d(inter)/d(mu_a) = -4 / pairs sum_c w_c (mu_a - mu_c), reaching each pixel of a with 1 / n_a
        scale = -4.0 * has_inter / pairs * inv_a
        for d0 in range(0, D, BLOCK_D):
            diff, _ = _mean_differences(sums, a, cs, partner, inv_a, inv_c, d0, D, BLOCK_D)
            ch = d0 + tl.arange(0, BLOCK_D)
            tl.store(g + ch, scale * tl.sum(w[:, None] * diff, 0), mask=ch < D)
    else:
        for d0 in range(0, D, BLOCK_D):
            ch = d0 + tl.arange(0, BLOCK_D)
            tl.store(g + ch, tl.zeros([BLOCK_D], dtype=ACC), mask=ch < D)
    tl.store(st_ptr + a_off + b * K + a, factor)
    tl.store(st_ptr + row_intra_off + b * K + a, row_intra)
    tl.store(st_ptr + row_inter_off + b * K + a, row_inter)


@triton.jit
def _finish_kernel(st_ptr, flags_off, row_intra_off, row_inter_off, present_off, scale_off, loss_ptr, terms_ptr,
                   B, K, w_intra, w_inter, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """One program: the batch's terms from the classes' shares, in a fixed order."""
    intra = tl.zeros([BLOCK_B, BLOCK_K], dtype=ACC)
    inter = tl.zeros([BLOCK_B, BLOCK_K], dtype=ACC)
    n_intra = tl.zeros([BLOCK_B], dtype=ACC)
    n_inter = tl.zeros([BLOCK_B], dtype=ACC)
    for b0 in range(0, B, BLOCK_B):
        bs = b0 + tl.arange(0, BLOCK_B)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            mask = (bs[:, None] < B) & (ks[None, :] < K)
            offs = bs[:, None] * K + ks[None, :]
            intra += tl.load(st_ptr + row_intra_off + offs, mask=mask, other=0)
            inter += tl.load(st_ptr + row_inter_off + offs, mask=mask, other=0)
        present = tl.load(st_ptr + present_off + bs, mask=bs < B, other=0)
        n_intra += tl.where(present >= 1.0, 1.0, 0.0)
        n_inter += tl.where(present >= 2.0, 1.0, 0.0)
    c_intra = tl.maximum(tl.sum(n_intra, 0), 1.0)
    c_inter = tl.maximum(tl.sum(n_inter, 0), 1.0)
    t_intra = tl.sum(tl.sum(intra, 1), 0) / c_intra
    t_inter = tl.sum(tl.sum(inter, 1), 0) / c_inter
    flagged = tl.load(st_ptr + flags_off + 0) + tl.load(st_ptr + flags_off + 1)
    t_intra = tl.where(flagged != 0, float("nan"), t_intra)
    t_inter = tl.where(flagged != 0, float("nan"), t_inter)
    tl.store(terms_ptr, t_intra)
    tl.store(terms_ptr + 1, t_inter)
    tl.store(loss_ptr, w_intra * t_intra + w_inter * t_inter)
    tl.store(st_ptr + scale_off, 1.0 / c_intra)
    tl.store(st_ptr + scale_off + 1, 1.0 / c_inter)


@triton.autotune(configs=TILE_CONFIGS, key=["d_bucket", "n_bucket", "k_bucket"])
@triton.jit
def _grad_kernel(feats_ptr, labels_ptr, st_ptr, counts_off, wsum_off, coef_off, a_off, g_off, scale_off,
                 grad_loss_ptr, grad_terms_ptr, terms_stride, w_intra, w_inter, out_ptr, D, N, K, ignore_index,
                 d_bucket, n_bucket, k_bucket, HAS_LOSS: tl.constexpr, HAS_TERMS: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dF_i = s_i (a_k coef_i (f_i - mu_k) - a_k / n_k wsum_k) + s_e g_k, k = y_i (kernels/cac_loss.cu's
    cac_grad_kernel); 0 at ignored pixels."""
    b, pix, y, valid = pixel_tile(labels_ptr, N, K, ignore_index, BLOCK_N)
    ch = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    go_intra = 0.0  # the upstream gradient of each term: the loss's times its weight, plus the term's own
    go_inter = 0.0
    if HAS_LOSS:
        grad_loss = tl.load(grad_loss_ptr).to(ACC)
        go_intra = go_intra + w_intra * grad_loss
        go_inter = go_inter + w_inter * grad_loss
    if HAS_TERMS:
        go_intra = go_intra + tl.load(grad_terms_ptr).to(ACC)
        go_inter = go_inter + tl.load(grad_terms_ptr + terms_stride).to(ACC)
    s_intra = go_intra * tl.load(st_ptr + scale_off)
    s_inter = go_inter * tl.load(st_ptr + scale_off + 1)
    y = tl.where(valid, y, 0)
    bk = b * K + y
    inv = mean_scale(st_ptr + counts_off, b, y, K, valid, True, ACC)
    ak = s_intra * tl.load(st_ptr + a_off + bk, mask=valid, other=0)
    direct = ak * tl.load(st_ptr + coef_off + b * N + pix, mask=valid, other=0)
    mask = (ch[:, None] < D) & valid[None, :]
    offs = (b * D + ch[:, None]) * N + pix[None, :]
    row = bk[None, :] * D + ch[:, None]
    f = tl.load(feats_ptr + offs, mask=mask, other=0).to(ACC)
    mu = tl.load(st_ptr + row, mask=mask, other=0) * inv[None, :]
    wsum = tl.load(st_ptr + wsum_off + row, mask=mask, other=0)
    g = tl.load(st_ptr + g_off + row, mask=mask, other=0)
    v = direct[None, :] * (f - mu) - (ak * inv)[None, :] * wsum + s_inter * g
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=(ch[:, None] < D) & (pix[None, :] < N))


def cac_loss(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, delta_v: float, delta_d: float,
             w_intra: float, w_inter: float, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss [], terms [2], state) of feats [B,D,N] contiguous and int64 labels [B,N] (the C++ op's contract)."""
    b, d, n = feats.shape
    k = num_classes
    L = CacState(b, d, n, k)
    acc = acc_dtype(feats.dtype)
    st = feats.new_empty(L.total, dtype=acc)
    loss, terms = feats.new_empty((), dtype=acc), feats.new_empty(2, dtype=acc)
    if b == 0:  # no image: both terms 0
        return loss.zero_(), terms.zero_(), st
    st[:L.cleared].zero_()
    counts = st[L.counts:L.hinge].view(b, k)
    sums = st[:L.wsum].view(b, k, d)
    segment_sum(feats, labels, k, ignore_index, out=(sums, counts), flag=st.narrow(0, L.flags + FLAG_BAD_LABEL, 1))
    cac_pixel_pass(feats, labels, sums, delta_v, ignore_index, counts=counts,
                   out=(st[L.coef:L.a].view(b, n), st[L.hinge:L.wcount].view(b, k),
                        st[L.wsum:L.counts].view(b, k, d), st[L.wcount:L.flags].view(b, k)))
    block_k, block_d = class_blocks(k, d)
    _class_part_kernel[(k, b)](st, L.counts, L.hinge, L.flags, L.a, L.g_inter, L.row_intra, L.row_inter,
                               L.present, d, k, float(delta_d), ACC=tl_acc(feats.dtype), BLOCK_K=block_k,
                               BLOCK_D=block_d, num_warps=4)
    _finish_kernel[(1,)](st, L.flags, L.row_intra, L.row_inter, L.present, L.scale, loss, terms, b, k,
                         float(w_intra), float(w_inter), ACC=tl_acc(feats.dtype), BLOCK_B=min(bucket(b), 16),
                         BLOCK_K=min(bucket(k), 64), num_warps=4)
    return loss, terms, st


def cac_loss_backward(grad_loss: torch.Tensor | None, grad_terms: torch.Tensor | None, feats: torch.Tensor,
                      labels: torch.Tensor, state: torch.Tensor, num_classes: int, w_intra: float, w_inter: float,
                      ignore_index: int) -> torch.Tensor:
    """d(loss) / d(feats) [B,D,N] from the upstream gradients of the loss [] and of the terms [2] (either None)."""
    b, d, n = feats.shape
    k = num_classes
    L = CacState(b, d, n, k)
    out = torch.empty_like(feats)
    if out.numel() == 0:
        return out
    grid = lambda meta: (b, triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(d, meta["BLOCK_D"]))
    _grad_kernel[grid](feats, labels, state, L.counts, L.wsum, L.coef, L.a, L.g_inter, L.scale,
                       grad_loss if grad_loss is not None else state, grad_terms if grad_terms is not None else state,
                       grad_terms.stride(0) if grad_terms is not None else 0, float(w_intra), float(w_inter), out,
                       d, n, k, ignore_index, bucket(d), bucket(n), bucket(k), HAS_LOSS=grad_loss is not None,
                       HAS_TERMS=grad_terms is not None, ACC=tl_acc(feats.dtype))
    return out
