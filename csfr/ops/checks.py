"""Input validation shared by the operators: clear errors before any work is done.

Metadata checks (shape, dtype, device, K, D) run everywhere, also under torch.compile.
Value checks (label range, finite features) need the data, so they run inside the custom
ops, which execute eagerly even in a compiled graph. Reading data on the host would force a
host synchronisation on a GPU, so on device tensors (`host_checks` is False) the label check is
a device-side assertion and non-finite features give a NaN loss instead of an exception;
the training loop checks label values on the CPU, before the batch is moved to the device.
"""

from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_features_labels(feats: Tensor, labels: Tensor, num_classes: int, op: str) -> None:
    """Features [B, D, *spatial] floating, labels [B, *spatial] integer, same device, K >= 1."""
    if not isinstance(feats, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"{op}: features and labels must be tensors, got "
                        f"{type(feats).__name__} and {type(labels).__name__}")
    if feats.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: features must be float32/float16/bfloat16/float64, got {feats.dtype}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{op}: labels must be an integer tensor, got {labels.dtype}")
    if labels.dtype not in LABEL_DTYPES:
        raise TypeError(f"{op}: labels must be uint8, int8, int16, int32 or int64, got {labels.dtype}")
    if feats.dim() < 2:
        raise ValueError(f"{op}: features must be [B, D, *spatial], got shape {tuple(feats.shape)}")
    if tuple(labels.shape) != (feats.shape[0], *feats.shape[2:]):
        raise ValueError(
            f"{op}: labels shape {tuple(labels.shape)} does not match features shape "
            f"{tuple(feats.shape)}; expected labels of shape {(feats.shape[0], *feats.shape[2:])}")
    if feats.device != labels.device:
        raise ValueError(f"{op}: features are on {feats.device} but labels are on {labels.device}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{op}: num_classes must be an integer >= 1, got {num_classes!r}")
    if feats.shape[1] == 0:
        raise ValueError(f"{op}: features have no channels (D = 0), shape {tuple(feats.shape)}")


def host_checks(t: Tensor) -> bool:
    """Whether value checks may read `t` on the host: only for CPU tensors. Anywhere else the
    read is a host synchronisation, so the checks there are asynchronous or skipped."""
    return t.device.type == "cpu"


def fused_host_checks(backend: str, labels: Tensor) -> bool:
    """Whether a fused op's values are checked on the host around it: on CPU tensors (the cpu backend, and
    Triton's interpreter), eagerly. The CUDA code path (cuda, and cuda_emulated standing in for it on CPU
    tensors) checks labels in its kernels instead and reads nothing back, as Triton does on a GPU."""
    return backend != "cuda_emulated" and host_checks(labels) and not torch.compiler.is_compiling()


def check_label_values(labels: Tensor, num_classes: int, ignore_index: int, op: str) -> None:
    """Every label is in [0, num_classes) or equals ignore_index; names the first offender.

    Compared in the labels' own dtype without wrapping: an ignore_index the dtype cannot hold
    (255 in int8) matches no label, so an int8 -1 is refused, never taken for 255.
    On device tensors a device-side assertion (no host sync): it fails at a later CUDA call,
    with this message but without the value; the kernels ignore such labels meanwhile.
    """
    info = torch.iinfo(labels.dtype)
    bad = (labels < 0) | (labels > min(num_classes - 1, info.max))
    fits = info.min <= ignore_index <= info.max
    if fits:
        bad &= labels != ignore_index
    note = f"labels are {labels.dtype}" + ("" if fits else f", which cannot hold {ignore_index}")
    if not host_checks(labels):
        torch._assert_async(~bad.any(), f"{op}: a label value is outside [0, {num_classes}) and is not "
                            f"ignore_index={ignore_index} ({note}; check the labels on the CPU to see which)")
        return
    if bool(bad.any()):
        value = int(labels[bad][0])
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{op}: label value {value} at index {where} is outside [0, {num_classes}) "
                         f"and is not ignore_index={ignore_index} ({note})")


class NonFiniteFeatures(ValueError):
    """Features reaching an operator hold NaN or Inf (a diverged network, or bad input)."""


def _non_finite(op: str, image: int, cls: int) -> NonFiniteFeatures:
    return NonFiniteFeatures(f"{op}: features contain NaN or Inf (first in image {image}, in pixels of class {cls})")


def check_finite_features(feats: Tensor, labels: Tensor, ignore_index: int, op: str) -> None:
    """Every counted pixel's features are finite (ignored pixels may hold anything). Host tensors
    only: on a device the reference's loss is NaN instead."""
    if not host_checks(feats):
        return
    bad = ~torch.isfinite(feats).all(1) & (labels != ignore_index)
    if bool(bad.any()):
        where = tuple(bad.nonzero()[0])
        raise _non_finite(op, int(where[0]), int(labels[where]))


def check_blend(x: Tensor, s: Tensor, g: Tensor) -> None:
    """x and s same shape and dtype, g broadcastable to x, all on one device."""
    for name, t in (("x", x), ("s", s), ("g", g)):
        if not isinstance(t, Tensor):
            raise TypeError(f"gated_blend: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"gated_blend: {name} must be floating point, got {t.dtype}")
    if x.shape != s.shape:
        raise ValueError(f"gated_blend: x shape {tuple(x.shape)} != s shape {tuple(s.shape)}")
    if not (x.dtype == s.dtype == g.dtype):
        raise TypeError(f"gated_blend: x, s, g must share a dtype, got {x.dtype}, {s.dtype}, {g.dtype}")
    if not (x.device == s.device == g.device):
        raise ValueError(f"gated_blend: x, s, g must be on one device, got {x.device}, {s.device}, {g.device}")
    try:
        shape = torch.broadcast_shapes(x.shape, g.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape or g.dim() > x.dim():
        raise ValueError(f"gated_blend: gate shape {tuple(g.shape)} does not broadcast to x shape {tuple(x.shape)}")
