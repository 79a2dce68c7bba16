"""Autotuning configurations, and the single one used under the Triton interpreter.

The interpreter (TRITON_INTERPRET=1, Triton on CPU tensors) runs a kernel in numpy; trying
several configurations there only costs time, so one small configuration is used.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def configs(blocks: list[dict], interp: dict) -> list[triton.Config]:
    """triton.Config objects for `blocks` on a GPU, or the one `interp` config in the interpreter."""
    if interpreted():
        return [triton.Config(interp, num_warps=1)]
    return [triton.Config(block, num_warps=warps) for block in blocks for warps in (4, 8)]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 accumulates in fp64; fp32, fp16 and bf16 in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc(dtype: torch.dtype):
    """The accumulation dtype as a Triton type, passed to kernels as a constexpr."""
    return tl.float64 if dtype == torch.float64 else tl.float32
