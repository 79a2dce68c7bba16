"""torch.library.opcheck on every csfr custom op: schema, fake kernel, autograd registration and
AOT dispatch with dynamic shapes, checked together (PyTorch's custom-op guide)."""

import pytest
import torch

import csfr  # noqa: F401  (registers the ops)
from csfr.ops.blend import _canonical_gate
from csfr.ops.dispatch import _library

# backends the composite ops are checked on (cuda_emulated: the CUDA kernels, executed on the CPU)
BACKENDS = [pytest.param("cpu", id="cpu"), pytest.param("triton", id="triton"),
            pytest.param("cuda_emulated", id="cuda_emulated")]


def _segment_inputs(dtype=torch.float32, requires_grad=False):
    feats = torch.randn(2, 5, 24, dtype=dtype, requires_grad=requires_grad)
    labels = torch.randint(0, 4, (2, 24))
    labels[0, :3] = 255
    return feats, labels


def _kernel_cases():
    """(kernel op, args) covering every kernel of the contract, on the C++ CPU kernels."""
    feats, labels = _segment_inputs()
    ops = torch.ops.csfr
    mu = torch.randn(2, 4, 5)
    g, coef, a = torch.randn(2, 4, 5), torch.rand(2, 24), torch.rand(2, 4)
    x, s = torch.randn(2, 6, 10), torch.randn(2, 6, 10)
    for f in (feats, feats.half()):  # fp32 accumulation for fp16 features
        yield f"segment_sum_{f.dtype}", ops.segment_sum.default, (f, labels, 4, 255)
        yield f"cac_pixel_pass_{f.dtype}", ops.cac_pixel_pass.default, (f, labels, mu, 0.1, 255)
    yield "pixel_grad", ops.pixel_grad.default, (feats, labels, g, 255, mu, coef, a)
    yield "pixel_grad_no_direct", ops.pixel_grad.default, (feats, labels, g, 255, None, None, None)
    for shape in ((2, 6, 10), (2, 1, 10), (2, 6, 1)):
        gate = torch.randn(shape)
        yield f"blend_forward_{shape[1]}x{shape[2]}", ops.blend_forward.default, (x, s, gate)
        yield f"blend_backward_{shape[1]}x{shape[2]}", ops.blend_backward.default, \
            (torch.randn_like(x), x, s, gate)


KERNEL_CASES = {name: (op, args) for name, op, args in _kernel_cases()}


def _fused_cases(lib):
    """The fused ops of library `lib` (csfr: C++ autograd; csfr_triton: Triton's) and their backwards, on
    fp32 and fp16 features."""
    for dtype in (torch.float32, torch.float16):
        feats, labels = _segment_inputs(dtype, requires_grad=True)
        yield f"cac_loss_{dtype}", lib.cac_loss.default, (feats, labels, 4, 0.1, 1.0, 0.3, 0.7, 255)
        _, _, state = lib.cac_loss(feats.detach(), labels, 4, 0.1, 1.0, 0.3, 0.7, 255)
        for given in ("loss", "terms", "both"):
            grad_loss = torch.tensor(1.5) if given != "terms" else None
            grad_terms = torch.tensor([0.2, -0.4]) if given != "loss" else None
            yield f"cac_loss_backward_{given}_{dtype}", lib.cac_loss_backward.default, \
                (grad_loss, grad_terms, feats.detach(), labels, state, 4, 0.3, 0.7, 255)
        yield f"class_centroids_fused_{dtype}", lib.class_centroids_fused.default, (feats, labels, 4, 255)
        _, _, state = lib.class_centroids_fused(feats.detach(), labels, 4, 255)
        grad_mu = torch.randn(2, 4, 5, dtype=dtype)
        for kind, grad in (("dense", grad_mu), ("broadcast", torch.ones((), dtype=dtype).expand(2, 4, 5))):
            yield f"class_centroids_fused_backward_{kind}_{dtype}", \
                lib.class_centroids_fused_backward.default, (grad, feats.detach(), labels, state, 4, 255)


FUSED_NAMES = [name for name, *_ in _fused_cases(torch.ops.csfr)]


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("case", FUSED_NAMES)
def test_fused_ops(backend, case):
    if backend == "triton":
        pytest.importorskip("triton", reason="triton is not installed")
    lib = _library(backend)
    op, args = next((op, args) for name, op, args in _fused_cases(lib) if name == case)
    torch.library.opcheck(op, args)


def test_fused_loss_state_has_the_size_the_fakes_give():
    """kernels/fused_state.h's CacState.total() and CentroidState.total() agree with their mirrors in
    csfr.ops.layout, which the fake kernels use."""
    from csfr.ops.layout import cac_state_size, centroid_state_size
    for b, d, n, k in ((2, 5, 24, 4), (1, 3, 7, 9), (3, 1, 1, 1)):
        feats, labels = torch.randn(b, d, n), torch.randint(0, k, (b, n))
        _, _, state = torch.ops.csfr.cac_loss(feats, labels, k, 0.1, 1.0, 1.0, 1.0, 255)
        assert state.shape == (cac_state_size(b, d, n, k),)
        _, _, state = torch.ops.csfr.class_centroids_fused(feats, labels, k, 255)
        assert state.shape == (centroid_state_size(b, d, k),)


@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_cpu_kernel_ops(case):
    op, args = KERNEL_CASES[case]
    torch.library.opcheck(op, args)


def _composite_cases(backend):
    ops = torch.ops.csfr
    x, s = (torch.randn(2, 6, 3, 4, requires_grad=True) for _ in range(2))
    for kind, shape in (("full", (2, 6, 3, 4)), ("pixel", (2, 1, 3, 4)), ("channel", (2, 6, 1, 1))):
        gate = _canonical_gate(x, torch.randn(shape)).requires_grad_(True)
        flat = [t.reshape(2, 6, 12).detach().requires_grad_(True) for t in (x, s)]
        yield f"gated_blend_{kind}", ops.gated_blend.default, (*flat, gate, backend)
        dz = torch.randn(2, 6, 12)
        yield f"gated_blend_backward_{kind}", ops.gated_blend_backward.default, \
            (dz, *[t.detach() for t in flat], gate.detach(), backend)


COMPOSITE_NAMES = [name for name, *_ in _composite_cases("cpu")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", COMPOSITE_NAMES)
def test_composite_ops(backend, case):
    op, args = next((op, args) for name, op, args in _composite_cases(backend) if name == case)
    torch.library.opcheck(op, args)
