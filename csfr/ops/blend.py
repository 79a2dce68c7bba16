"""gated_blend: z = x + sigmoid(g) * (s - x) as a fused torch.library custom op."""

from __future__ import annotations

import torch
from torch import Tensor

from csfr.ops import reference
from csfr.ops.checks import check_blend
from csfr.ops.dispatch import kernels, resolve


@torch.library.custom_op("csfr::gated_blend_backward", mutates_args=())
def _blend_backward(grad_z: Tensor, x: Tensor, s: Tensor, g: Tensor,
                    backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return kernels(backend).blend_backward(grad_z, x, s, g)


@_blend_backward.register_fake
def _(grad_z, x, s, g, backend):
    return torch.empty_like(x), torch.empty_like(s), torch.empty_like(g)


@torch.library.custom_op("csfr::gated_blend", mutates_args=())
def _blend(x: Tensor, s: Tensor, g: Tensor, backend: str) -> Tensor:
    return kernels(backend).blend_forward(x, s, g)


@_blend.register_fake
def _(x, s, g, backend):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, s, g, backend = inputs
    ctx.save_for_backward(x, s, g)
    ctx.backend = backend


def _backward(ctx, grad_z):
    x, s, g = ctx.saved_tensors
    dx, ds, dg = _blend_backward(grad_z.contiguous(), x, s, g, ctx.backend)
    return dx, ds, dg, None


_blend.register_autograd(_backward, setup_context=_setup_context)


def _canonical_gate(x: Tensor, g: Tensor) -> Tensor:
    """g as contiguous [B,C,1] (per channel), [B,1,N] (per pixel) or [B,C,N] (full)."""
    b, c = x.shape[:2]
    g = g.reshape((1,) * (x.dim() - g.dim()) + tuple(g.shape))
    if all(size == 1 for size in g.shape[2:]):
        return g.expand(b, c, *g.shape[2:]).reshape(b, c, 1).contiguous()
    if g.shape[1] == 1:
        return g.expand(b, 1, *x.shape[2:]).reshape(b, 1, -1).contiguous()
    return g.expand(x.shape).reshape(b, c, -1).contiguous()


def _recording_portable_graph() -> bool:
    """True under torch.export, ONNX export or jit tracing: such a graph must run anywhere without
    csfr, so it records the plain-torch formula, never a backend picked for this machine."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def gated_blend(x: Tensor, s: Tensor, g: Tensor, backend: str = "auto") -> Tensor:
    """z = x + sigmoid(g) * (s - x), the AAM fusion (docs/design.md, operator 3).

    Args:
        x, s: [B, C, *spatial], one floating dtype.
        g: gate logits broadcastable to x: per pixel [B, 1, *spatial], per channel [B, C, 1, ...],
            or full [B, C, *spatial]; other broadcastable shapes are expanded (their gradient is
            summed back).
        backend: "auto", "torch", "cpu", "cuda" or "triton".

    Returns:
        z [B, C, *spatial] in x's dtype; differentiable in x, s and g.
    """
    check_blend(x, s, g)
    name = "torch" if _recording_portable_graph() else resolve(backend, x.device)
    if name == "torch":
        return reference.gated_blend(x, s, g)
    if x.dim() < 2:
        raise ValueError(f"gated_blend: x must be [B, C, *spatial], got shape {tuple(x.shape)}")
    b, c = x.shape[:2]
    g_flat = _canonical_gate(x, g)
    z = _blend(x.reshape(b, c, -1).contiguous(), s.reshape(b, c, -1).contiguous(), g_flat, name)
    return z.reshape(x.shape)
