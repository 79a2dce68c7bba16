"""Which kernel backends exist here, and picking one for a given tensor.

A backend provides the five kernels the operators are built from (the "kernel contract"
in docs/kernels.md): segment_sum, cac_pixel_pass, pixel_grad, blend_forward, blend_backward.
`torch` is the reference and has no kernels: the operators fall back to csfr.ops.reference.
`cuda_emulated` runs the CUDA kernels on CPU tensors through an emulation of the CUDA execution
model (csfr.ops.emulation); it is for tests, and "auto" never picks it.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch

USER_NAMES = ("torch", "cpu", "cuda", "triton")  # what a config may name (train.backend)
NAMES = (*USER_NAMES, "cuda_emulated")  # and the test-only one, which `auto` never picks
_KERNEL_NAMES = ("segment_sum", "cac_pixel_pass", "pixel_grad", "blend_forward", "blend_backward")


class BackendUnavailable(RuntimeError):
    """Raised when a requested backend cannot run here; the message says why."""


_EXTENSION: list = []  # (module, reason), filled once; a plain global so torch.compile can trace it


def _extension():
    """Returns (module, None) if csfr._C imports, else (None, reason).

    CSFR_EXTENSION_LIBRARY names another build of csrc/ (e.g. under sanitizers) to load instead.
    """
    if not _EXTENSION:
        library = os.environ.get("CSFR_EXTENSION_LIBRARY")
        if library:  # a test build of the same sources (the sanitizer run of tests/test_sanitizers.py)
            torch.ops.load_library(library)
            _EXTENSION.append((SimpleNamespace(with_cuda=False, with_openmp=True), None))
            return _EXTENSION[0]
        try:
            from csfr import _C
            _EXTENSION.append((_C, None))
        except ImportError as exc:
            _EXTENSION.append((None, (f"the C++ extension csfr._C is not built ({exc}); "
                                     "run `pip install --no-build-isolation .` in the source tree")))
    return _EXTENSION[0]


def _why_not(name: str) -> str | None:
    """None if backend `name` can run here, else the reason it cannot."""
    if name == "torch":
        return None
    if name in ("cpu", "cuda"):
        ext, reason = _extension()
        if ext is None:
            return reason
        if name == "cuda":
            if not ext.with_cuda:
                return ("csfr._C was built without CUDA (torch had no CUDA or nvcc was not found at "
                        "build time; rebuild with CSFR_BUILD_CUDA=1)")
            if not torch.cuda.is_available():
                return "no CUDA device is visible to torch"
        return None
    if name == "cuda_emulated":
        from csfr.ops import emulation
        return emulation.why_unavailable()
    if name == "triton":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed (pip install triton)"
        if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
            return "no CUDA device is visible to torch (set TRITON_INTERPRET=1 to run on the CPU)"
        return None
    raise ValueError(f"unknown backend {name!r}; valid: {', '.join(NAMES)}")


def backends() -> dict[str, str]:
    """Every backend mapped to 'available' or the reason it is not."""
    return {name: _why_not(name) or "available" for name in NAMES}


@functools.cache
def kernels(name: str) -> SimpleNamespace:
    """The five kernels of backend `name` (cpu, cuda, cuda_emulated or triton) as plain callables."""
    reason = _why_not(name)
    if reason is not None:
        raise BackendUnavailable(f"csfr backend {name!r} is unavailable: {reason}")
    if name in ("cpu", "cuda", "cuda_emulated"):
        ops = _library(name)
        return SimpleNamespace(**{k: getattr(ops, k).default for k in _KERNEL_NAMES})
    if name == "triton":
        from csfr.ops import triton as triton_kernels
        return SimpleNamespace(**{k: getattr(triton_kernels, k) for k in _KERNEL_NAMES})
    raise ValueError(f"backend {name!r} has no kernels (the torch backend is the reference)")


def _library(name: str):
    """The op namespace of a backend: torch.ops.csfr, the emulated one (built and loaded on first use), or
    Triton's fused ops (csfr.ops.triton.library, registered on first use)."""
    if name == "cuda_emulated":
        from csfr.ops import emulation
        emulation.load()
        return torch.ops.csfr_emulated
    if name == "triton":
        import csfr.ops.triton.library  # noqa: F401  (registers torch.ops.csfr_triton)
        return torch.ops.csfr_triton
    return torch.ops.csfr


def fused(name: str, op: str):
    """Op `op` (cac_loss or class_centroids_fused) of kernel backend `name` (every backend but torch has
    both), its backward an op of its own (in C++ on the C++ backends). Not cached, so torch.compile traces
    it to the op itself."""
    return getattr(_library(name), op)


def resolve(backend: str, device: torch.device) -> str:
    """The concrete backend to run on `device`.

    An explicit name is checked and returned; "auto" honours CSFR_BACKEND if set, else picks
    cuda -> triton -> torch on CUDA tensors and cpu -> torch elsewhere.
    """
    if backend == "auto":
        backend = os.environ.get("CSFR_BACKEND", "auto") or "auto"
    if backend == "auto":
        order = ("cuda", "triton", "torch") if device.type == "cuda" else ("cpu", "torch")
        return next(name for name in order if _why_not(name) is None)
    reason = _why_not(backend)
    if reason is not None:
        raise BackendUnavailable(f"csfr backend {backend!r} is unavailable: {reason}")
    if backend in ("cpu", "cuda_emulated") and device.type != "cpu":
        raise BackendUnavailable(f"csfr backend {backend!r} runs on CPU tensors, got tensors on {device}")
    if backend == "cuda" and device.type != "cuda":
        raise BackendUnavailable(f"csfr backend 'cuda' runs on CUDA tensors, got tensors on {device}")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailable(
            f"csfr backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got tensors on {device}")
    return backend
