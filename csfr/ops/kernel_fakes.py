"""Fake (meta) kernels of the C++ kernel ops (torch.ops.csfr.*, docs/kernels.md): output
shapes and dtypes without data (csfr.ops.fake_shapes), so the ops work with FakeTensors (torch.compile,
torch.library.opcheck). Registered only when the extension csfr._C is built (the ops exist only then)."""

from __future__ import annotations

import torch

from csfr.ops.dispatch import _extension
from csfr.ops.fake_shapes import FAKES


def _on_one_device(name, fake):
    """fake, refusing operands on several devices as the real kernels do: the dispatcher picks this
    kernel whenever any operand is a meta tensor, and would otherwise return uninitialised outputs."""
    def checked(*args):
        devices = {str(a.device) for a in args if isinstance(a, torch.Tensor)}
        if len(devices) > 1:
            raise RuntimeError(f"csfr::{name}: every tensor must be on one device, got {', '.join(sorted(devices))}")
        return fake(*args)
    return checked


if _extension()[0] is not None:  # csfr._C (or the build CSFR_EXTENSION_LIBRARY names) defines the ops
    for _name, _fake in FAKES.items():
        torch.library.register_fake(f"csfr::{_name}")(_on_one_device(_name, _fake))
