"""Mixed precision: the `train.amp` modes and the autocast context of one."""

from __future__ import annotations

import contextlib

import torch

from csfr.configs.schema import AMP_MODES

__all__ = ["AMP_MODES", "autocast"]


def autocast(device: torch.device, amp: str):
    """torch.autocast to the `amp` dtype on `device`, or a no-op context for "none"."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, amp))
