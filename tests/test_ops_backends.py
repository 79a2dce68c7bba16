"""Every fused backend available here against csfr.ops.reference on fresh random inputs."""

import os
import subprocess
import sys

import pytest
import torch
from opcases import GATES, compare_all_ops, compare_gated_blend, compare_label_kernels

import csfr
from csfr.ops import reference
from csfr.profiling import peak_extra_bytes

FUSED = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]

# (B, D, H, W, K): covers D 1..512, 1x1..97x97 and K in {1, 2, 19, 150, 171}
SHAPES = [
    (1, 1, 1, 1, 1),
    (2, 3, 5, 7, 2),
    (3, 64, 33, 33, 19),
    (2, 512, 97, 97, 19),
    (2, 32, 17, 19, 150),
    (4, 16, 33, 33, 171),
]

def device_of(backend):
    return "cuda" if backend == "cuda" else "cpu"


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", ["ignore", "one_class", "all_ignore_image", "all_ignore_batch"])
def test_cac_loss_matches_reference(backend, shape, case):
    terms, grad = compare_all_ops(backend, device_of(backend), torch.float32, shape, case)
    if case == "all_ignore_batch":
        assert terms.abs().sum() == 0 and grad.abs().sum() == 0


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 64, 33, 33, 19), (2, 24, 9, 11, 150)], ids=lambda s: "x".join(map(str, s)))
def test_all_ops_match_reference_in_each_dtype(backend, dtype, shape):
    compare_all_ops(backend, device_of(backend), dtype, shape)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gate", list(GATES))
def test_gated_blend_matches_reference(backend, dtype, gate):
    compare_gated_blend(backend, device_of(backend), dtype, gate)


def test_cpu_blend_baseline_loops_match_reference():
    """The blend's row loops also exist for CPUs without AVX2; force them and check all dtypes and gates."""
    code = ("import torch, opcases\n"
            "for dtype in (torch.float32, torch.float16, torch.bfloat16):\n"
            "    for gate in opcases.GATES:\n"
            "        opcases.compare_gated_blend('cpu', 'cpu', dtype, gate)\n")
    env = {**os.environ, "CSFR_CPU_BASELINE": "1", "PYTHONPATH": os.path.dirname(__file__)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_cpu_gradcheck_float64():
    feats = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (2, 4, 3))
    labels[0, 0] = 255
    labels[1] = 255 * (labels[1] == 3) + labels[1] * (labels[1] != 3)  # class 3 absent in image 1
    assert torch.autograd.gradcheck(lambda f: csfr.ops.cac_terms(f, labels, 4, 0.2, 1.0, backend="cpu"), (feats,))
    assert torch.autograd.gradcheck(
        lambda f: csfr.ops.class_centroids(f, labels, 4, backend="cpu")[0], (feats,))
    x, s = (torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    for shape in [(2, 1, 4, 3), (2, 3, 1, 1), (2, 3, 4, 3)]:
        g = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b, c: csfr.ops.gated_blend(a, b, c, backend="cpu"), (x, s, g))


def test_non_contiguous_and_channels_last_inputs():
    base = torch.randn(2, 16, 12, 10)
    labels = torch.randint(0, 5, (2, 10, 12))
    for feats in (base.transpose(2, 3), base.transpose(2, 3).contiguous(memory_format=torch.channels_last)):
        assert not feats.is_contiguous()
        torch.testing.assert_close(csfr.ops.cac_loss(feats, labels.mT.mT, 5, backend="cpu"),
                                   reference.cac_loss(feats, labels, 5))
        torch.testing.assert_close(csfr.ops.class_centroids(feats, labels, 5, backend="cpu")[0],
                                   reference.class_centroids(feats, labels, 5)[0])
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    s, g = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)[:, :, ::1, ::1].transpose(2, 3)
    torch.testing.assert_close(csfr.ops.gated_blend(x, s, g, backend="cpu"), reference.gated_blend(x, s, g))


def test_auto_picks_cpu_and_env_forces_backend(monkeypatch):
    from csfr.ops.dispatch import resolve

    cpu = torch.device("cpu")
    monkeypatch.delenv("CSFR_BACKEND", raising=False)
    assert resolve("auto", cpu) == "cpu"
    monkeypatch.setenv("CSFR_BACKEND", "torch")
    assert resolve("auto", cpu) == "torch"
    assert resolve("cpu", cpu) == "cpu"  # an explicit argument wins over the variable


def test_backends_reports_every_backend():
    report = csfr.ops.backends()
    assert set(report) == {"torch", "cpu", "cuda", "triton", "cuda_emulated"}
    assert report["torch"] == "available" and report["cpu"] == "available"
    if not torch.cuda.is_available():
        assert report["cuda"] != "available" and report["cuda"]  # a reason, not an empty string


class _UsesEveryOp(torch.nn.Module):
    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend

    def forward(self, feats, labels, x):
        loss = csfr.ops.cac_loss(feats, labels, 6, backend=self.backend)
        mu, _ = csfr.ops.class_centroids(feats, labels, 6, backend=self.backend)
        z = csfr.ops.gated_blend(x, feats, feats[:, :1], backend=self.backend)
        return loss + mu.square().mean() + z.square().mean()


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_torch_compile_fullgraph_matches_eager(backend):
    """Every op traces whole (no graph break) and the compiled graph's values and gradients are eager's:
    the fused ops of the C++ library and of Triton's (csfr_triton, in the interpreter here)."""
    if csfr.ops.backends()[backend] != "available":
        pytest.skip(f"backend {backend} unavailable here")
    feats = torch.randn(2, 8, 7, 9)
    labels = torch.randint(0, 6, (2, 7, 9))
    labels[0, 0] = 255
    x = torch.randn(2, 8, 7, 9)
    module = _UsesEveryOp(backend)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")

    def run(fn):
        f, xx = feats.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out = fn(f, labels, xx)
        out.backward()
        return out, f.grad, xx.grad

    for got, want in zip(run(compiled), run(module)):
        torch.testing.assert_close(got, want)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from /proc")
def test_cpu_cac_loss_allocates_no_pixel_by_class_tensor():
    """Peak extra memory of fwd+bwd stays near |dF|, far below one N x K tensor (the reference's
    one-hot is the control showing the measurement can see such a tensor)."""
    b, d, h, w, k = 2, 4, 128, 128, 150
    feats = torch.randn(b, d, h, w, requires_grad=True)
    labels = torch.randint(0, k, (b, h, w))
    n_by_k = b * h * w * k * 4

    def step(fn):
        def run():
            feats.grad = None
            fn(feats, labels, k).backward()
        run()
        return peak_extra_bytes(run, feats.device)

    fused = step(lambda f, y, kk: csfr.ops.cac_loss(f, y, kk, backend="cpu"))
    control = step(reference.cac_loss)
    assert control > n_by_k
    assert fused < n_by_k / 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", ["ignore", "blocky", "all_ignore_image"])
def test_cpu_label_kernels_match_the_contract(dtype, case):
    """The C++ CPU label kernels called directly (the kernel contract of docs/kernels.md)."""
    compare_label_kernels("cpu", dtype, (2, 19, 17, 19, 19), case)
