"""Autotuning configurations and keys, the interpreter's single configuration, the deterministic switch.

The interpreter (TRITON_INTERPRET=1, Triton on CPU tensors) runs a kernel in numpy; trying
several configurations there only costs time, so one small configuration is used.
Autotuning is keyed on size buckets (`bucket`), not on exact sizes: evaluating images of many
sizes (ADE20K whole-image, multi-scale testing) then tunes once per bucket, not once per size.
CSFR_TRITON_CONFIG=i pins every kernel to its i-th configuration instead (read at import).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from csfr.ops.layout import acc_dtype

__all__ = ["acc_dtype", "bucket", "configs", "deterministic", "interpreted", "pinned_config", "tl_acc"]


WARPS = (4, 8)  # each block shape is tried with these warp counts


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def pinned_config() -> int | None:
    """CSFR_TRITON_CONFIG: None (unset or empty: autotune), else the index of the one configuration
    every autotuned kernel uses (modulo the length of its list)."""
    value = os.environ.get("CSFR_TRITON_CONFIG", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise ValueError(f"CSFR_TRITON_CONFIG must be a configuration index (0, 1, ...) or unset, got {value!r}")
    return int(value)


def configs(blocks: list[dict], interp: dict) -> list[triton.Config]:
    """triton.Config objects for `blocks` on a GPU (every block with 4 and 8 warps), or the one
    `interp` config in the interpreter. With CSFR_TRITON_CONFIG set, only that configuration: one
    compile per kernel and no timing runs (autotuning compiles and times each configuration for every
    new size bucket and dtype, which dominates a test suite of many small shapes)."""
    if interpreted():
        return [triton.Config(interp, num_warps=1)]
    every = [triton.Config(block, num_warps=warps) for block in blocks for warps in WARPS]
    pin = pinned_config()
    return every if pin is None else [every[pin % len(every)]]


def bucket(size: int) -> int:
    """The autotuning bucket of a size: the power of two at or above it (1 for 0 or 1), so sizes
    up to 2**31 fall in at most 32 buckets."""
    return triton.next_power_of_2(max(int(size), 1))


def deterministic() -> bool:
    """True under torch.use_deterministic_algorithms(True): the kernels then take their
    atomics-free paths with fixed block sizes, so results are bitwise reproducible."""
    return torch.are_deterministic_algorithms_enabled()


def tl_acc(dtype: torch.dtype):
    """The accumulation dtype as a Triton type, passed to kernels as a constexpr."""
    return tl.float64 if dtype == torch.float64 else tl.float32
