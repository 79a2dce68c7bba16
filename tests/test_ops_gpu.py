"""GPU tests: the cuda and triton backends against the reference (csfr.ops.reference) on CUDA tensors.

Every test is marked `cuda` and skipped without a GPU (tests/conftest.py); they are the only check the
CUDA kernels get on a real GPU. The comparisons and tolerances are tests/opcases.py's (shared with the
CPU and Triton-interpreter tests): values and gradients within the dtype's rounding and the fp32
summation error of the reduction length, relative to the reference's scale.

Grid: B 1..5, D 1..512, h x w 1x1..97x97, K in {1, 2, 19, 150, 171}; fp32, bf16, fp16. The main cases
put at least two classes in every image (where K and h*w allow), so the inter-class term and its
gradient are live, in blocky (coherent tiles) and uniform label maps. The one-class image, the
all-ignore image and the all-ignore batch are separate cases. Also: every broadcastable gate shape,
channels-last and non-contiguous inputs, and ignore_index -1, 0 (a class id) and K.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from opcases import GATES, LAYOUTS, assert_close, compare_all_ops, compare_gated_blend, make_labels

from csfr import ops
from csfr.ops import reference
from csfr.ops.triton import blend as triton_blend
from csfr.ops.triton import segment as triton_segment
from csfr.ops.triton.tuning import WARPS

pytestmark = pytest.mark.cuda

DEVICE = "cuda"
IGNORE = 255
BACKENDS = ("cuda", "triton")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (B, D, h, w, K)
SHAPES = [
    (1, 1, 1, 1, 1),  # one pixel, one class: the degenerate case
    (2, 3, 5, 7, 2),
    (3, 16, 17, 19, 19),
    (2, 64, 33, 33, 150),
    (4, 32, 64, 64, 171),
    (2, 512, 97, 97, 19),
    (5, 8, 97, 97, 2),
    (2, 128, 40, 24, 150),
]
EDGE_SHAPES = [(2, 3, 5, 7, 2), (3, 16, 17, 19, 19), (2, 64, 33, 33, 150), (2, 512, 97, 97, 19)]
BLEND_SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (2, 64, 33, 33), (4, 512, 97, 97)]


def shape_id(shape) -> str:
    return "x".join(map(str, shape))


def _backend(name: str) -> str:
    why = ops.backends()[name]
    if why != "available":
        pytest.skip(f"backend {name}: {why}")
    return name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("case", ["blocky", "ignore"])
def test_cac_and_centroids_with_several_classes_per_image(backend, dtype, shape, case):
    compare_all_ops(_backend(backend), DEVICE, dtype, shape, case)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=shape_id)
@pytest.mark.parametrize("case", ["one_class", "all_ignore_image", "all_ignore_batch"])
def test_cac_and_centroids_edge_cases(backend, dtype, shape, case):
    terms, grad = compare_all_ops(_backend(backend), DEVICE, dtype, shape, case)
    if case == "all_ignore_batch":  # 0 with a zero gradient, never NaN
        assert terms.abs().sum() == 0 and grad.abs().sum() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "contiguous"])
def test_cac_and_centroids_channels_last_and_strided_inputs(backend, dtype, layout):
    compare_all_ops(_backend(backend), DEVICE, dtype, (2, 64, 33, 33, 19), "blocky", layout=layout)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ignore_index", [-1, 0, 19])
def test_cac_and_centroids_other_ignore_index(backend, dtype, ignore_index):
    compare_all_ops(_backend(backend), DEVICE, dtype, (3, 16, 17, 19, 19), "blocky", ignore_index)
    compare_all_ops(backend, DEVICE, dtype, (2, 64, 33, 33, 19), "all_ignore_image", ignore_index)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pairwise_identity(backend):
    """delta_v = 0: the fused intra term equals half the mean pairwise same-class squared distance."""
    _backend(backend)
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 8, 9, 10, generator=gen).to(DEVICE)
    labels = make_labels(2, 9, 10, 5, DEVICE, "blocky", IGNORE, gen)
    intra = ops.cac_terms(feats, labels, 5, delta_v=0.0, ignore_index=IGNORE, backend=backend)[0]
    torch.testing.assert_close(intra, reference.cac_loss_pairwise(feats, labels, 5, IGNORE), rtol=1e-4, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gate", list(GATES))
@pytest.mark.parametrize("shape", BLEND_SHAPES, ids=shape_id)
def test_gated_blend_every_gate_shape(backend, dtype, gate, shape):
    compare_gated_blend(_backend(backend), DEVICE, dtype, gate, shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gate", ["pixel", "channel", "full", "shared_channel"])
@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "contiguous"])
def test_gated_blend_channels_last_and_strided_inputs(backend, dtype, gate, layout):
    compare_gated_blend(_backend(backend), DEVICE, dtype, gate, (2, 64, 33, 33), layout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_determinism(backend):
    """Same inputs twice: results equal within rounding. The segmented sums use float atomics, whose
    order varies between runs, so cac_loss and class_centroids are not bitwise reproducible: two runs may
    differ by what two summation orders of an image's pixels may (opcases.tolerance with n = H x W);
    counts are exact integers and gated_blend has no atomics, so those are bitwise."""
    _backend(backend)
    gen = torch.Generator().manual_seed(4)
    feats = torch.randn(4, 256, 97, 97, generator=gen).to(DEVICE)
    labels = make_labels(4, 97, 97, 19, DEVICE, "blocky", IGNORE, gen)

    def run():
        f = feats.detach().clone().requires_grad_(True)
        loss = ops.cac_loss(f, labels, 19, backend=backend)
        loss.backward()
        mu, n = ops.class_centroids(feats, labels, 19, IGNORE, backend=backend)
        return loss.detach(), f.grad, mu, n

    first, second = run(), run()
    for name, a, b in zip(("loss", "grad", "mu"), first[:3], second[:3]):
        assert_close(a, b, reduction=97 * 97, msg=name)
    assert torch.equal(first[3], second[3])
    x, s, g = (torch.randn(2, 64, 33, 33, device=DEVICE) for _ in range(3))
    assert torch.equal(ops.gated_blend(x, s, g, backend=backend), ops.gated_blend(x, s, g, backend=backend))


# Run in a fresh process per configuration (CSFR_TRITON_CONFIG is read when the kernels are defined):
# tail tiles in D and N, a mixed and a blocky label map, fp32 and bf16, the three gate modes.
_CONFIG_CHECK = """
import torch
from opcases import compare_all_ops, compare_gated_blend
for shape, case in (((3, 72, 17, 19, 19), "blocky"), ((2, 72, 33, 33, 150), "ignore")):
    for dtype in (torch.float32, torch.bfloat16):
        compare_all_ops("triton", "cuda", dtype, shape, case)
for gate in ("pixel", "channel", "full"):
    compare_gated_blend("triton", "cuda", torch.float32, gate, (2, 24, 33, 35))
"""
_CONFIGS = max(len(triton_segment.TILE_BLOCKS), len(triton_blend.BLOCKS)) * len(WARPS)


@pytest.mark.parametrize("config", ["autotune", *map(str, range(_CONFIGS))])
def test_triton_every_configuration(config):
    """The rest of the suite runs the Triton kernels in configuration 0 (tests/conftest.py); here every
    configuration of every kernel (index modulo the kernel's count), and autotuning itself: its timing
    runs must leave nothing in the outputs (reset_to_zero) before the real run."""
    _backend("triton")
    tests = str(Path(__file__).parent)
    env = {**os.environ, "CSFR_TRITON_CONFIG": "" if config == "autotune" else config,
           "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _CONFIG_CHECK], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, f"CSFR_TRITON_CONFIG={env['CSFR_TRITON_CONFIG']!r}:\n{proc.stderr[-4000:]}"


class _Block(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.backend = backend
        self.gate = torch.nn.Conv2d(16, 16, 1)

    def forward(self, x, s, labels):
        z = ops.gated_blend(x, s, self.gate(x), backend=self.backend)
        mu, _ = ops.class_centroids(z, labels, 19, IGNORE, backend=self.backend)
        return ops.cac_loss(z, labels, 19, backend=self.backend) + mu.float().square().mean()


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile(backend):
    _backend(backend)
    block = _Block(backend).to(DEVICE)
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 16, 24, 24, generator=gen).to(DEVICE)
    labels = make_labels(2, 24, 24, 19, DEVICE, "blocky", IGNORE, gen)
    s = torch.randn_like(feats)
    compiled = torch.compile(block, fullgraph=True)
    x_eager = feats.clone().requires_grad_(True)
    x_comp = feats.clone().requires_grad_(True)
    eager = block(x_eager, s, labels)
    eager.backward()
    got = compiled(x_comp, s, labels)
    got.backward()
    # the gate conv may pick another (TF32) algorithm when compiled: agreement to ~1e-4, not bitwise
    torch.testing.assert_close(got, eager, rtol=1e-4, atol=0)
    torch.testing.assert_close(x_comp.grad, x_eager.grad, rtol=1e-4, atol=1e-4 * float(x_eager.grad.abs().max()))


def test_cuda_backend_rejects_cpu_tensors():
    _backend("cuda")
    feats, labels = torch.randn(1, 4, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long)
    with pytest.raises(ops.BackendUnavailable, match="CUDA tensors"):
        ops.cac_loss(feats, labels, 2, backend="cuda")


def test_cuda_kernels_check_their_inputs():
    """The raw kernels (torch.ops.csfr.*) refuse bad inputs with a message naming the problem."""
    _backend("cuda")
    feats = torch.randn(2, 4, 10, device=DEVICE)
    labels = torch.zeros(2, 10, dtype=torch.long, device=DEVICE)
    with pytest.raises(RuntimeError, match="labels must be int64"):
        torch.ops.csfr.segment_sum(feats, labels.int(), 3, IGNORE)
    # a CPU operand among CUDA ones reaches the CUDA or the CPU kernel (the dispatcher picks by the mix):
    # either refuses it by name rather than reading one device's pointer on the other
    for f, y, mu in ((feats.cpu(), labels, None), (feats, labels.cpu(), None),
                     (feats.cpu(), labels.cpu(), torch.zeros(2, 3, 4, device=DEVICE))):
        with pytest.raises(RuntimeError, match="must be a (CPU|CUDA) tensor"):
            if mu is None:
                torch.ops.csfr.segment_sum(f, y, 3, IGNORE)
            else:
                torch.ops.csfr.cac_pixel_pass(f, y, mu, 0.5, IGNORE)
    x = torch.randn(2, 4, 10, device=DEVICE)
    with pytest.raises(RuntimeError, match="must be a (CPU|CUDA) tensor"):
        torch.ops.csfr.blend_forward(x.cpu(), x.cpu(), x)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.csfr.segment_sum(feats.transpose(1, 2).contiguous().transpose(1, 2), labels, 3, IGNORE)
    with pytest.raises(RuntimeError, match="mu must have shape"):
        torch.ops.csfr.cac_pixel_pass(feats, labels, torch.zeros(2, 3, 5, device=DEVICE), 0.5, IGNORE)
    with pytest.raises(RuntimeError, match="must be given together"):
        torch.ops.csfr.pixel_grad(feats, labels, torch.zeros(2, 3, 4, device=DEVICE), IGNORE,
                                  torch.zeros(2, 3, 4, device=DEVICE), None, None)


# the CUDA runtime calls that enqueue device work, as torch.profiler names them on a GPU
GPU_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaMemsetAsync")


@pytest.mark.parametrize("backend, op, bound", [("cuda", "cac_loss", 5), ("cuda", "class_centroids", 3),
                                               ("triton", "cac_loss", 6), ("triton", "class_centroids", 4)])
def test_fused_ops_launch_what_the_emulation_counts(backend, op, bound):
    """On the GPU the fused ops launch what tests/test_ops_host_cost.py counts on the CPU (through the
    emulation, and Triton's interpreter): on cuda, cac_loss a memset and four kernels forward + backward,
    class_centroids a memset and two; on triton, a clear and five kernels, and a clear and three."""
    from torch.profiler import ProfilerActivity, profile

    _backend(backend)
    gen = torch.Generator().manual_seed(0)
    feats = (torch.rand(2, 16, 12, 12, generator=gen) + 5).to(DEVICE).requires_grad_(True)
    labels = torch.randint(0, 5, (2, 12, 12), generator=gen).to(DEVICE)
    seed = torch.ones((), device=DEVICE) if op == "cac_loss" else torch.ones(2, 5, 16, device=DEVICE)

    def run():
        feats.grad = None
        out = ops.cac_loss(feats, labels, 5, backend=backend) if op == "cac_loss" else \
            ops.class_centroids(feats, labels, 5, backend=backend)[0]
        out.backward(seed)
    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    launches = [e.name for e in prof.events() if e.name in GPU_LAUNCHES]
    assert len(launches) == bound, launches
