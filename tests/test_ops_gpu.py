"""GPU tests: the cuda and triton backends against the reference (csfr.ops.reference) on CUDA tensors.

Every test is marked `cuda` and skipped without a GPU (tests/conftest.py). Shape grid of the foundation
issue: several B, D in 1..512, h x w in 1x1..97x97, K in {1, 2, 19, 150, 171}; labels with ignore pixels,
absent classes, a one-class image, an all-ignore image, and an all-ignore batch; fp32, bf16, fp16.
"""

from __future__ import annotations

import pytest
import torch

from csfr import ops
from csfr.ops import reference

pytestmark = pytest.mark.cuda

IGNORE = 255
BACKENDS = ("cuda", "triton")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (B, D, h, w, K)
SHAPES = [
    (1, 1, 1, 1, 1),
    (2, 3, 5, 7, 2),
    (3, 16, 17, 19, 19),
    (2, 64, 33, 33, 150),
    (4, 32, 64, 64, 171),
    (2, 512, 97, 97, 19),
    (5, 8, 97, 97, 2),
    (2, 128, 40, 24, 150),
]


def _backend(name: str) -> str:
    why = ops.backends()[name]
    if why != "available":
        pytest.skip(f"backend {name}: {why}")
    return name


def _tol(dtype: torch.dtype) -> dict:
    # kernels and reference both accumulate in fp32 from the same low-precision inputs; what differs
    # is summation order, and for gradients the final rounding to the features' dtype
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-3}


def assert_grad_close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, msg: str = "") -> None:
    """Gradients of a loss are tiny (~1 / pixels): the absolute tolerance scales with their largest value."""
    got, ref = got.float(), ref.float()
    rtol = _tol(dtype)["rtol"]
    torch.testing.assert_close(got, ref, rtol=rtol, atol=rtol * float(ref.abs().max()) + 1e-12, msg=msg)


def make_labels(b: int, h: int, w: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Blocky labels (realistic warp-level coherence) with ~10% ignore, one absent class when K > 2,
    image 0 of a single class and, when B > 1, an all-ignore last image."""
    cells = torch.randint(0, k, (b, (h + 3) // 4, (w + 3) // 4), generator=gen)
    labels = cells.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :h, :w].clone()
    noise = torch.rand(b, h, w, generator=gen)
    labels[noise < 0.1] = torch.randint(0, k, (int((noise < 0.1).sum()),), generator=gen)
    if k > 2:
        labels[labels == k - 1] = 0  # class k-1 absent everywhere
    labels[torch.rand(b, h, w, generator=gen) < 0.1] = IGNORE
    labels[0] = torch.where(labels[0] == IGNORE, IGNORE, min(1, k - 1))
    if b > 1:
        labels[-1] = IGNORE
    return labels


def make_inputs(shape, dtype, seed=0):
    b, d, h, w, k = shape
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, d, h, w, generator=gen) * 0.7
    labels = make_labels(b, h, w, k, gen)
    return feats.to("cuda", dtype), labels.cuda()


def _grad(fn, feats):
    f = feats.detach().clone().requires_grad_(True)
    out = fn(f)
    return out, f


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cac_terms_forward_backward(backend, dtype, shape):
    _backend(backend)
    feats, labels = make_inputs(shape, dtype)
    k = shape[-1]
    weights = torch.tensor([0.7, 1.3], device="cuda")
    got, fg = _grad(lambda f: ops.cac_terms(f, labels, k, 0.5, 1.5, IGNORE, backend=backend), feats)
    ref, fr = _grad(lambda f: reference.cac_terms(f, labels, k, 0.5, 1.5, IGNORE), feats)
    torch.testing.assert_close(got, ref, **_tol(dtype))
    (got * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.isfinite(fg.grad.float()).all()
    assert_grad_close(fg.grad, fr.grad, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_class_centroids_forward_backward(backend, dtype, shape):
    _backend(backend)
    feats, labels = make_inputs(shape, dtype, seed=1)
    k = shape[-1]
    (mu, n), fg = _grad(lambda f: ops.class_centroids(f, labels, k, IGNORE, backend=backend), feats)
    (mu_ref, n_ref), fr = _grad(lambda f: reference.class_centroids(f, labels, k, IGNORE), feats)
    assert mu.dtype == dtype and n.dtype == torch.int64
    assert torch.equal(n, n_ref)
    torch.testing.assert_close(mu.float(), mu_ref.float(), **_tol(dtype))
    dmu = torch.randn(mu.shape, device="cuda", dtype=dtype)
    (mu.float() * dmu.float()).sum().backward()
    (mu_ref.float() * dmu.float()).sum().backward()
    assert_grad_close(fg.grad, fr.grad, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_ignore_batch_gives_zero_loss_and_zero_grad(backend, dtype):
    _backend(backend)
    feats = torch.randn(3, 16, 9, 11, device="cuda", dtype=dtype, requires_grad=True)
    labels = torch.full((3, 9, 11), IGNORE, device="cuda")
    loss = ops.cac_loss(feats, labels, 19, backend=backend)
    loss.backward()
    assert float(loss) == 0.0
    assert torch.equal(feats.grad, torch.zeros_like(feats))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pairwise_identity(backend):
    """delta_v = 0: the fused intra term equals half the mean pairwise same-class squared distance."""
    _backend(backend)
    feats, labels = make_inputs((2, 8, 9, 10, 5), torch.float32, seed=3)
    intra = ops.cac_terms(feats, labels, 5, delta_v=0.0, ignore_index=IGNORE, backend=backend)[0]
    torch.testing.assert_close(intra, reference.cac_loss_pairwise(feats, labels, 5, IGNORE), rtol=1e-4, atol=1e-6)


GATES = {"pixel": lambda b, c, h, w: (b, 1, h, w), "channel": lambda b, c, h, w: (b, c, 1, 1),
         "full": lambda b, c, h, w: (b, c, h, w)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gate", sorted(GATES))
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (2, 64, 33, 33), (4, 512, 97, 97)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gated_blend_forward_backward(backend, dtype, gate, shape):
    _backend(backend)
    gen = torch.Generator().manual_seed(2)
    x, s = (torch.randn(shape, generator=gen).to("cuda", dtype) for _ in range(2))
    g = (torch.randn(GATES[gate](*shape), generator=gen) * 2).to("cuda", dtype)
    dz = torch.randn(shape, generator=gen).to("cuda", dtype)
    leaves = [t.clone().requires_grad_(True) for t in (x, s, g)]
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, s, g)]
    z = ops.gated_blend(*leaves, backend=backend)
    z_ref = reference.gated_blend(*ref_leaves)
    assert z.dtype == dtype
    torch.testing.assert_close(z.float(), z_ref.float(), **_tol(dtype))
    z.backward(dz)
    z_ref.backward(dz)
    # the gate gradient of a pixel/channel gate sums up to C or N terms: tolerance relative to its scale
    for name, a, b in zip("xsg", leaves, ref_leaves):
        assert_grad_close(a.grad, b.grad, dtype, msg=f"d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_determinism(backend):
    """Same inputs twice: results equal within rounding. The segmented sums use float atomics, whose
    order varies between runs, so cac_loss and class_centroids are not bitwise reproducible (differences
    are a few ulps); counts are exact integers and gated_blend has no atomics, so those are bitwise."""
    _backend(backend)
    feats, labels = make_inputs((4, 256, 97, 97, 19), torch.float32, seed=4)

    def run():
        f = feats.detach().clone().requires_grad_(True)
        loss = ops.cac_loss(f, labels, 19, backend=backend)
        loss.backward()
        mu, n = ops.class_centroids(feats, labels, 19, IGNORE, backend=backend)
        return loss.detach(), f.grad, mu, n

    first, second = run(), run()
    for name, a, b in zip(("loss", "grad", "mu"), first[:3], second[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    assert torch.equal(first[3], second[3])
    x, s, g = (torch.randn(2, 64, 33, 33, device="cuda") for _ in range(3))
    assert torch.equal(ops.gated_blend(x, s, g, backend=backend), ops.gated_blend(x, s, g, backend=backend))


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
    block = _Block(backend).cuda()
    feats, labels = make_inputs((2, 16, 24, 24, 19), torch.float32, seed=5)
    s = torch.randn_like(feats)
    compiled = torch.compile(block, fullgraph=True)
    x_eager = feats.clone().requires_grad_(True)
    x_comp = feats.clone().requires_grad_(True)
    eager = block(x_eager, s, labels)
    eager.backward()
    got = compiled(x_comp, s, labels)
    got.backward()
    # the gate conv may pick another (TF32) algorithm when compiled: agreement to ~1e-4, not bitwise
    torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-5)
    assert_grad_close(x_comp.grad, x_eager.grad, torch.float32)


def test_cuda_backend_rejects_cpu_tensors():
    _backend("cuda")
    feats, labels = torch.randn(1, 4, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long)
    with pytest.raises(ops.BackendUnavailable, match="CUDA tensors"):
        ops.cac_loss(feats, labels, 2, backend="cuda")


def test_cuda_kernels_check_their_inputs():
    """The raw kernels (torch.ops.csfr.*) refuse bad inputs with a message naming the problem."""
    _backend("cuda")
    feats = torch.randn(2, 4, 10, device="cuda")
    labels = torch.zeros(2, 10, dtype=torch.long, device="cuda")
    with pytest.raises(RuntimeError, match="labels must be int64"):
        torch.ops.csfr.segment_sum(feats, labels.int(), 3, IGNORE)
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        torch.ops.csfr.segment_sum(feats.cpu(), labels, 3, IGNORE)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.csfr.segment_sum(feats.transpose(1, 2).contiguous().transpose(1, 2), labels, 3, IGNORE)
    with pytest.raises(RuntimeError, match="mu must have shape"):
        torch.ops.csfr.cac_pixel_pass(feats, labels, torch.zeros(2, 3, 5, device="cuda"), 0.5, IGNORE)
    with pytest.raises(RuntimeError, match="must be given together"):
        torch.ops.csfr.pixel_grad(feats, labels, torch.zeros(2, 3, 4, device="cuda"), IGNORE,
                                  torch.zeros(2, 3, 4, device="cuda"), None, None)
