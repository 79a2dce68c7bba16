"""Bad input raises before any work, naming the problem, on every backend available here."""

import pytest
import torch

import csfr
from csfr.ops import BackendUnavailable

BACKENDS = ["torch", "cpu"]
K = 5


def good_inputs(b=2, d=4, h=6, w=5):
    return torch.randn(b, d, h, w), torch.randint(0, K, (b, h, w))


def all_ops(feats, labels, backend, k=K):
    """Calls each label-taking operator; used with pytest.raises to check all of them."""
    yield lambda: csfr.ops.cac_loss(feats, labels, k, backend=backend)
    yield lambda: csfr.ops.class_centroids(feats, labels, k, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [K, 7, -1, 254])
def test_label_outside_range_names_the_value(backend, value):
    feats, labels = good_inputs()
    labels[1, 3, 2] = value
    for call in all_ops(feats, labels, backend):
        with pytest.raises(ValueError, match=rf"label value {value} at index \(1, 3, 2\).*\[0, {K}\)"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_index_is_not_an_error_and_is_configurable(backend):
    feats, labels = good_inputs()
    labels[0, 0, 0] = 255
    csfr.ops.cac_loss(feats, labels, K, backend=backend)
    labels[0, 0, 0] = -1
    csfr.ops.cac_loss(feats, labels, K, ignore_index=-1, backend=backend)
    with pytest.raises(ValueError, match="label value -1"):
        csfr.ops.cac_loss(feats, labels, K, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bool], ids=str)
def test_non_integer_labels(backend, dtype):
    feats, labels = good_inputs()
    for call in all_ops(feats, labels.to(dtype), backend):
        with pytest.raises(TypeError, match=f"labels must be an integer tensor, got {dtype}"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_mismatch_names_both_shapes(backend):
    feats, labels = good_inputs()
    for call in all_ops(feats, labels[:, :-1], backend):
        with pytest.raises(ValueError, match=r"labels shape \(2, 5, 5\) does not match features shape \(2, 4, 6, 5\)"):
            call()
    for call in all_ops(feats, labels[:1], backend):
        with pytest.raises(ValueError, match="does not match"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
def test_features_and_labels_on_different_devices(backend):
    feats, labels = good_inputs()
    for call in all_ops(feats, labels.to("meta"), backend):
        with pytest.raises(ValueError, match="features are on cpu but labels are on meta"):
            call()


@pytest.mark.skipif(csfr.ops.backends()["cpu"] != "available", reason="needs the C++ extension")
def test_raw_kernels_refuse_operands_on_several_devices():
    """A meta operand among CPU ones sends the raw kernel ops to their fake kernels, which would hand
    back uninitialised CPU tensors; they refuse instead (a CUDA operand is refused by the C++ checks,
    tests/test_ops_gpu.py)."""
    feats, labels = torch.randn(2, 4, 10), torch.zeros(2, 10, dtype=torch.long)
    mu, x = torch.zeros(2, 3, 4), torch.randn(2, 4, 10)
    calls = [lambda: torch.ops.csfr.segment_sum(feats, labels.to("meta"), 3, 255),
             lambda: torch.ops.csfr.cac_pixel_pass(feats, labels, mu.to("meta"), 0.5, 255),
             lambda: torch.ops.csfr.pixel_grad(feats.to("meta"), labels, mu, 255, None, None, None),
             lambda: torch.ops.csfr.blend_forward(x, x, x.to("meta")),
             lambda: torch.ops.csfr.blend_backward(x.to("meta"), x, x, x)]
    for call in calls:
        with pytest.raises(RuntimeError, match="every tensor must be on one device, got cpu, meta"):
            call()


@pytest.mark.parametrize("backend", ["cpu", "cuda_emulated"])
def test_raw_kernels_name_the_shape_they_got(backend):
    """The C++ checks write the offending shape out (csrc/shape_text.h; streaming it crashed one GPU build):
    the CPU kernels and the CUDA glue (emulated)."""
    if csfr.ops.backends()[backend] != "available":
        pytest.skip(f"backend {backend} unavailable here")
    k = csfr.ops.dispatch.kernels(backend)
    feats, labels = torch.randn(2, 4, 10), torch.zeros(2, 10, dtype=torch.long)
    with pytest.raises(RuntimeError, match=r"features must be \[B, D, N\], got \[2, 40\]"):
        k.segment_sum(feats.reshape(2, 40), labels, 3, 255)
    with pytest.raises(RuntimeError, match=r"labels must be \[B, N\] = \[2, 10\], got \[2, 5, 2\]"):
        k.segment_sum(feats, labels.reshape(2, 5, 2), 3, 255)
    with pytest.raises(RuntimeError, match=r"g must be \[B, C, N\], \[B, 1, N\] or \[B, C, 1\], got \[2, 3, 10\]"):
        k.blend_forward(feats, feats, torch.zeros(2, 3, 10))
    with pytest.raises(RuntimeError, match=r"mu must have shape \[2, 3, 4\], got \[2, 3, 5\]"):
        k.cac_pixel_pass(feats, labels, torch.zeros(2, 3, 5), 0.5, 255)


@pytest.mark.parametrize("backend", ["cpu", "cuda_emulated"])
def test_raw_kernels_refuse_alike(backend):
    """One header of checks (csrc/checks.h) for the CPU kernels and the CUDA glue: the same input gets the
    same message on both (the CPU kernels once took a negative delta_v, and a mu of other channels)."""
    if csfr.ops.backends()[backend] != "available":
        pytest.skip(f"backend {backend} unavailable here")
    k = csfr.ops.dispatch.kernels(backend)
    feats, labels = torch.randn(2, 4, 10), torch.zeros(2, 10, dtype=torch.long)
    mu = torch.zeros(2, 3, 4)
    with pytest.raises(RuntimeError, match=r"cac_pixel_pass: margins must be >= 0, got delta_v=-0.5"):
        k.cac_pixel_pass(feats, labels, mu, -0.5, 255)
    with pytest.raises(RuntimeError, match=r"cac_pixel_pass: mu must be Float, got Double"):
        k.cac_pixel_pass(feats, labels, mu.double(), 0.5, 255)
    with pytest.raises(RuntimeError, match=r"pixel_grad: coef must have shape \[2, 10\], got \[2, 9\]"):
        k.pixel_grad(feats, labels, mu, 255, mu, torch.zeros(2, 9), torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match=r"segment_sum: labels must be contiguous"):
        k.segment_sum(feats, torch.zeros(10, 2, dtype=torch.long).t(), 3, 255)
    with pytest.raises(RuntimeError, match=r"blend_backward: grad_z must match x"):
        k.blend_backward(feats[:, :2].contiguous(), feats, feats, feats)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [0, -3, 2.0])
def test_num_classes_must_be_a_positive_integer(backend, k):
    feats, labels = good_inputs()
    for call in all_ops(feats, labels.clamp(max=0), backend, k=k):
        with pytest.raises(ValueError, match=f"num_classes must be an integer >= 1, got {k!r}"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64], ids=str)
def test_non_floating_features(backend, dtype):
    feats, labels = good_inputs()
    for call in all_ops(feats.to(dtype), labels, backend):
        with pytest.raises(TypeError, match=f"features must be float32/float16/bfloat16/float64, got {dtype}"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_features_raise_instead_of_a_nan_loss(backend, bad):
    feats, labels = good_inputs()
    labels[1, 2, 3] = 3
    feats[1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match=r"features contain NaN or Inf \(first in image 1, in pixels of class 3\)"):
        csfr.ops.cac_loss(feats, labels, K, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_ignored_pixels_is_harmless(backend):
    feats, labels = good_inputs()
    labels[0, 0, 0] = 255
    feats[0, :, 0, 0] = float("nan")
    assert torch.isfinite(csfr.ops.cac_loss(feats, labels, K, backend=backend))


def test_negative_margins():
    feats, labels = good_inputs()
    with pytest.raises(ValueError, match="margins must be >= 0"):
        csfr.ops.cac_loss(feats, labels, K, delta_v=-0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_blend_bad_inputs(backend):
    x = torch.randn(2, 3, 4, 4)

    def blend(s, g):
        return csfr.ops.gated_blend(x, s, g, backend=backend)

    with pytest.raises(ValueError, match=r"x shape \(2, 3, 4, 4\) != s shape \(2, 3, 4, 5\)"):
        blend(torch.randn(2, 3, 4, 5), x)
    with pytest.raises(ValueError, match=r"gate shape \(2, 2, 1, 1\) does not broadcast"):
        blend(x, torch.randn(2, 2, 1, 1))
    with pytest.raises(TypeError, match="must share a dtype"):
        blend(x.half(), x)
    with pytest.raises(TypeError, match="g must be floating point, got torch.int64"):
        blend(x, torch.ones(2, 3, 1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="one device"):
        blend(x, x.to("meta"))


def test_unknown_and_unavailable_backends_say_why(monkeypatch):
    feats, labels = good_inputs()
    with pytest.raises(ValueError, match="unknown backend 'fast'; valid: torch, cpu, cuda, triton"):
        csfr.ops.cac_loss(feats, labels, K, backend="fast")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="'cuda' is unavailable: .+"):
            csfr.ops.cac_loss(feats, labels, K, backend="cuda")
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(BackendUnavailable, match="'triton' is unavailable: .+"):
            csfr.ops.gated_blend(feats, feats, feats, backend="triton")
    monkeypatch.setenv("CSFR_BACKEND", "cuda" if not torch.cuda.is_available() else "fast")
    with pytest.raises((BackendUnavailable, ValueError)):
        csfr.ops.cac_loss(feats, labels, K)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_errors_come_before_any_kernel_runs(monkeypatch, backend):
    """A label error on CPU tensors is raised by the checks, never by (or after) the fused op."""
    from csfr.ops import cac, centroids

    if csfr.ops.backends()[backend] != "available":
        pytest.skip(f"backend {backend} unavailable here")
    calls = []
    for module in (cac, centroids):
        monkeypatch.setattr(module, "fused", lambda name, op: calls.append(op))
    feats, labels = good_inputs()
    labels[0, 0, 0] = 99
    for call in (lambda: csfr.ops.cac_loss(feats, labels, K, backend=backend),
                 lambda: csfr.ops.class_centroids(feats, labels, K, backend=backend)):
        with pytest.raises(ValueError, match="label value 99"):
            call()
    assert calls == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_features_without_channels_are_rejected(backend):
    """D = 0 has no centroids to compare: every backend rejects it in the shared checks."""
    feats, labels = good_inputs(d=0)
    for call in all_ops(feats, labels, backend):
        with pytest.raises(ValueError, match=r"features have no channels \(D = 0\), shape \(2, 0, 6, 5\)"):
            call()
