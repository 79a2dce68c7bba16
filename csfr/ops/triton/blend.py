"""Triton kernels for gated_blend: z = x + sigmoid(g) (s - x), forward and one-pass backward.

x, s are [B,C,N]; the gate is full [B,C,N], per pixel [B,1,N] or per channel [B,C,1], read
through zero strides. In the backward a broadcast gate's gradient is reduced in registers
over the tile and added with one atomic per pixel (per-pixel gate) or per channel
(per-channel gate) into an fp32 buffer. In deterministic mode each tile stores its partial sum
instead (per channel block, or per pixel block), and torch sums the partials in a fixed order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from csfr.ops.triton.tuning import acc_dtype, bucket, configs, deterministic, tl_acc

BLOCKS = [{"BLOCK_C": c, "BLOCK_N": n} for c in (4, 16) for n in (128, 256)]
_CONFIGS = configs(BLOCKS, {"BLOCK_C": 4, "BLOCK_N": 16})
_KEY = ["c_bucket", "n_bucket", "MODE"]
DETERMINISTIC_TILE = {"BLOCK_C": 16, "BLOCK_N": 128}

FULL, PIXEL, CHANNEL = 0, 1, 2


def _gate_mode(x: torch.Tensor, g: torch.Tensor) -> int:
    if g.shape == x.shape:
        return FULL
    return PIXEL if g.shape[1] == 1 else CHANNEL


@triton.jit
def _tile(b, C, N, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, MODE: tl.constexpr):
    """Offsets of this program's [BLOCK_C, BLOCK_N] tile in x and in the gate, and its mask."""
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pix = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (ch[:, None] < C) & (pix[None, :] < N)
    offs = (b * C + ch[:, None]) * N + pix[None, :]
    if MODE == 0:
        goffs = offs
    elif MODE == 1:
        goffs = b * N + pix[None, :] + 0 * ch[:, None]
    else:
        goffs = b * C + ch[:, None] + 0 * pix[None, :]
    return ch, pix, mask, offs, goffs


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _blend_forward_kernel(x_ptr, s_ptr, g_ptr, z_ptr, C, N, c_bucket, n_bucket, MODE: tl.constexpr,
                          ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    _, _, mask, offs, goffs = _tile(b, C, N, BLOCK_C, BLOCK_N, MODE)
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    s = tl.load(s_ptr + offs, mask=mask, other=0).to(ACC)
    gate = tl.sigmoid(tl.load(g_ptr + goffs, mask=mask, other=0).to(ACC))
    tl.store(z_ptr + offs, (x + gate * (s - x)).to(z_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_CONFIGS, key=_KEY, reset_to_zero=["dg_ptr"])
@triton.jit
def _blend_backward_kernel(dz_ptr, x_ptr, s_ptr, g_ptr, dx_ptr, ds_ptr, dg_ptr, C, N, c_bucket, n_bucket,
                           MODE: tl.constexpr, PARTIALS: tl.constexpr, ACC: tl.constexpr,
                           BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """PARTIALS (deterministic): a broadcast gate's tile sums are stored, not added: per-pixel gates
    into dg [B, C blocks, N], per-channel gates into dg [B, C, N blocks]."""
    b = tl.program_id(0).to(tl.int64)
    ch, pix, mask, offs, goffs = _tile(b, C, N, BLOCK_C, BLOCK_N, MODE)
    dz = tl.load(dz_ptr + offs, mask=mask, other=0).to(ACC)
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(ACC)
    s = tl.load(s_ptr + offs, mask=mask, other=0).to(ACC)
    gate = tl.sigmoid(tl.load(g_ptr + goffs, mask=mask, other=0).to(ACC))
    tl.store(ds_ptr + offs, (gate * dz).to(ds_ptr.dtype.element_ty), mask=mask)
    tl.store(dx_ptr + offs, ((1 - gate) * dz).to(dx_ptr.dtype.element_ty), mask=mask)
    dg = tl.where(mask, (s - x) * gate * (1 - gate) * dz, 0)
    if MODE == 0:
        tl.store(dg_ptr + offs, dg.to(dg_ptr.dtype.element_ty), mask=mask)
    elif PARTIALS and MODE == 1:
        tl.store(dg_ptr + (b * tl.num_programs(1) + tl.program_id(1)) * N + pix, tl.sum(dg, 0), mask=pix < N)
    elif PARTIALS:
        tl.store(dg_ptr + (b * C + ch) * tl.num_programs(2) + tl.program_id(2), tl.sum(dg, 1), mask=ch < C)
    elif MODE == 1:
        tl.atomic_add(dg_ptr + b * N + pix, tl.sum(dg, 0), mask=pix < N)
    else:
        tl.atomic_add(dg_ptr + b * C + ch, tl.sum(dg, 1), mask=ch < C)


def _grid(b: int, c: int, n: int):
    return lambda meta: (b, triton.cdiv(c, meta["BLOCK_C"]), triton.cdiv(n, meta["BLOCK_N"]))


def blend_forward(x: torch.Tensor, s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    b, c, n = x.shape
    z = torch.empty_like(x)
    if z.numel():
        _blend_forward_kernel[_grid(b, c, n)](x, s, g, z, c, n, bucket(c), bucket(n), MODE=_gate_mode(x, g),
                                              ACC=tl_acc(x.dtype))
    return z


def blend_backward(dz: torch.Tensor, x: torch.Tensor, s: torch.Tensor, g: torch.Tensor):
    b, c, n = x.shape
    mode = _gate_mode(x, g)
    dx, ds = torch.empty_like(x), torch.empty_like(s)
    # broadcast gates accumulate across programs, so in the accumulation dtype
    dg = torch.empty_like(g) if mode == FULL else torch.zeros_like(g, dtype=acc_dtype(g.dtype))
    if not x.numel():
        return dx, ds, dg.to(g.dtype)
    args = (dz.contiguous(), x, s, g, dx, ds)
    if deterministic() and mode != FULL:
        tile = DETERMINISTIC_TILE
        blocks = (b, triton.cdiv(c, tile["BLOCK_C"]), triton.cdiv(n, tile["BLOCK_N"]))
        shape = (b, blocks[1], n) if mode == PIXEL else (b, c, blocks[2])
        part = x.new_empty(shape, dtype=acc_dtype(g.dtype))
        _blend_backward_kernel.fn[blocks](*args, part, c, n, bucket(c), bucket(n), MODE=mode, PARTIALS=True,
                                          ACC=tl_acc(x.dtype), **tile)
        return dx, ds, part.sum(1 if mode == PIXEL else 2, keepdim=True).to(g.dtype)
    _blend_backward_kernel[_grid(b, c, n)](*args, dg, c, n, bucket(c), bucket(n), MODE=mode, PARTIALS=False,
                                           ACC=tl_acc(x.dtype))
    return dx, ds, dg.to(g.dtype)
