"""Inputs and comparisons shared by the operator tests: any backend name, any device.

Used by the CPU, Triton-interpreter and GPU tests (and any other backend, e.g. an emulated one):
`compare_all_ops` / `compare_gated_blend` run one backend and the reference (`csfr.ops.reference`)
on the same inputs and compare values and gradients with `assert_close`, whose tolerance
`tolerance` derives from the result's dtype and the length of the sums behind each value.
"""

import torch

import csfr
from csfr.ops import reference
from csfr.ops.blend import _canonical_gate

FP32_EPS = torch.finfo(torch.float32).eps
# margin on the worst-case fp32 summation bound below (the bound itself is rarely approached)
SUM_MARGIN = 4


def tolerance(dtype: torch.dtype, expected: torch.Tensor, reduction: int = 1) -> tuple[float, float]:
    """(rtol, atol) for a backend's result of `dtype` against the reference's `expected`.

    Every backend and the reference compute in fp32 from the same inputs (docs/design.md: accumulate in fp32)
    and round the result once to `dtype`. They may differ only by
    - the fp32 summation order: a sum of n terms is exact to n * eps32 times the sum of the |terms|,
      whose scale is the result's, so atol = SUM_MARGIN * n * eps32 * max|expected|
      (n = `reduction`, the total length of the chained sums behind one value);
    - the final rounding: the two fp32 values may round to neighbouring values of `dtype`, one unit in
      the last place <= eps(dtype) * |value|, so rtol = eps(dtype): 2^-23 fp32, 2^-10 fp16, 2^-7 bf16;
    - below the smallest normal number a unit in the last place is fixed (2^-24 for fp16): added to atol.
    Nothing is floored at 1.0 (CAC gradients are ~1e-4..1e-2): the allowed error is a fraction of the
    reference's own scale, under 0.5 % for the test shapes (n <= 10^4), so a 5 % error fails in every dtype.
    """
    info = torch.finfo(dtype)
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    atol = SUM_MARGIN * reduction * FP32_EPS * scale + info.smallest_normal * info.eps
    return info.eps, atol


def assert_close(actual: torch.Tensor, expected: torch.Tensor, reduction: int = 1, msg: str = "",
                 rounded_partials: torch.Tensor | None = None) -> None:
    """actual (a backend's result) equals expected (the reference's) within `tolerance` of actual's dtype.

    rounded_partials: per element, the sum of |terms| that a backend may round to the dtype one by one
    before adding them up (see compare_gated_blend); each may land one unit in the last place, eps(dtype)
    of its term, away from the reference's unrounded term.
    """
    assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != reference {expected.dtype}"
    rtol, atol = tolerance(actual.dtype, expected, reduction)
    if rounded_partials is None:
        torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"{msg}\n{m}")
        return
    error = (actual.float() - expected.float()).abs()
    allowed = rtol * expected.float().abs() + atol + torch.finfo(actual.dtype).eps * rounded_partials
    worst = int((error - allowed).argmax())
    assert bool((error <= allowed).all()), (f"{msg}: {int((error > allowed).sum())} of {error.numel()} elements "
                                            f"differ; worst at flat index {worst}: {error.flatten()[worst]:.3g} "
                                            f"> allowed {allowed.flatten()[worst]:.3g}")


CASES = ("ignore", "blocky", "one_class", "all_ignore_image", "all_ignore_batch")


def block_labels(b, h, w, k, generator, cell=4, redrawn=0.1):
    """cell x cell blocks of one class (the coherent regions real label maps have) with a `redrawn`
    share of pixels drawn again (0: whole blocks, so a 64-pixel cell gives warps of a single class)."""
    cells = torch.randint(0, k, (b, -(-h // cell), -(-w // cell)), generator=generator)
    labels = cells.repeat_interleave(cell, 1).repeat_interleave(cell, 2)[:, :h, :w].clone()
    if redrawn > 0:
        noise = torch.rand(b, h, w, generator=generator) < redrawn
        labels[noise] = torch.randint(0, k, (int(noise.sum()),), generator=generator)
    return labels


def make_labels(b, h, w, k, device, case="ignore", ignore_index=255, generator=None):
    """Label maps [b,h,w] with the situations the operators must survive. Every case but the all-ignore
    batch keeps at least two classes (where K and h*w allow) in the images it does not single out, so
    the inter-class term and its gradient are live.

    ignore: uniform random classes, ~20 % ignore pixels and, when k > 2, class k-1 absent everywhere;
    blocky: the same in 4x4 blocks of one class (~10 % ignore); one_class: image 0 holds a single class;
    all_ignore_image: the last image is all ignore; all_ignore_batch: every pixel is.
    """
    if case == "blocky":
        labels = block_labels(b, h, w, k, generator).to(device)
    else:
        labels = torch.randint(0, k, (b, h, w), generator=generator).to(device)
    if ignore_index in range(k):  # the ignore value is also a class id: move that class elsewhere
        labels[labels == ignore_index] = (ignore_index + 1) % k
    if case in ("ignore", "blocky"):
        share = 0.2 if case == "ignore" else 0.1
        labels[torch.rand(b, h, w, generator=generator).to(device) < share] = ignore_index
        if k > 2:  # at least one class absent everywhere
            labels[labels == k - 1] = ignore_index
        classes = [c for c in range(k - 1 if k > 2 else k) if c != ignore_index]
        if len(classes) >= 2 and h * w >= 2:  # two classes in every image, whatever the draw
            labels[:, 0, 0], labels[:, -1, -1] = classes[0], classes[1]
    elif case == "one_class":
        labels[0] = (k - 1) if ignore_index != k - 1 else 0
    elif case == "all_ignore_image":
        labels[-1] = ignore_index
    elif case == "all_ignore_batch":
        labels.fill_(ignore_index)
    else:
        raise ValueError(f"unknown label case {case!r}; valid: {', '.join(CASES)}")
    return labels


LAYOUTS = ("contiguous", "channels_last", "strided")


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout: channels-last, or a non-contiguous transposed view."""
    if layout == "contiguous":
        return t
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
    if layout == "strided":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() >= 2 else t
    raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")


def run_cac(feats, labels, k, backend, upstream, ignore_index=255):
    """CAC terms (delta_v 0.1, delta_d 1.0) and d(terms . upstream)/d(feats) on `backend`."""
    feats = feats.detach().requires_grad_(True)
    terms = csfr.ops.cac_terms(feats, labels, k, 0.1, 1.0, ignore_index, backend=backend)
    (terms * upstream).sum().backward()
    return terms.detach(), feats.grad


def compare_all_ops(backend, dev, dtype, shape, case="ignore", ignore_index=255, layout="contiguous", seed=0):
    """cac_loss terms and class_centroids on `backend`, forward and gradients, against the reference.

    shape = (B, D, h, w, K); case: see make_labels; layout: see with_layout (features and labels).
    """
    b, d, h, w, k = shape
    gen = torch.Generator().manual_seed(seed)
    # the longest chain of sums behind one value: pixels of a class, then channels, then classes
    reduction = h * w + d + k
    feats = (torch.randn(b, d, h, w, generator=gen) * 0.5).to(dev, dtype)
    labels = make_labels(b, h, w, k, dev, case, ignore_index, gen)
    feats, labels = with_layout(feats, layout), with_layout(labels, layout)
    upstream = (torch.rand(2, generator=gen) + 0.5).to(dev)
    terms, grad = run_cac(feats, labels, k, backend, upstream, ignore_index)
    ref_terms, ref_grad = run_cac(feats, labels, k, "torch", upstream, ignore_index)
    assert grad.dtype == dtype and grad.shape == feats.shape
    assert torch.isfinite(terms).all() and torch.isfinite(grad.float()).all()
    assert_close(terms, ref_terms, reduction, "cac terms")
    assert_close(grad, ref_grad, reduction, "cac gradient")

    def centroids(bk):
        f = feats.detach().requires_grad_(True)
        mu, n = csfr.ops.class_centroids(f, labels, k, ignore_index, backend=bk)
        (mu.float() * torch.linspace(-1, 1, d, device=dev)).sum().backward()
        return mu, n, f.grad

    mu, n, g = centroids(backend)
    ref_mu, ref_n, ref_g = centroids("torch")
    assert n.dtype == torch.int64 and torch.equal(n, ref_n)
    assert_close(mu, ref_mu, h * w, "centroids")
    assert_close(g, ref_g, 1, "centroid gradient")
    return terms, grad


# gate shapes for x [B, C, H, W]: everything gated_blend accepts (g broadcastable to x)
GATES = {
    "pixel": lambda b, c, h, w: (b, 1, h, w),
    "channel": lambda b, c, h, w: (b, c, 1, 1),
    "full": lambda b, c, h, w: (b, c, h, w),
    "image": lambda b, c, h, w: (b, 1, 1, 1),
    "shared_channel": lambda b, c, h, w: (1, c, 1, 1),
    "shared_pixel": lambda b, c, h, w: (1, 1, h, w),
    "shared_full": lambda b, c, h, w: (1, c, h, w),
    "rank3": lambda b, c, h, w: (c, 1, 1),
    "rank2": lambda b, c, h, w: (h, w),
}


def compare_gated_blend(backend, dev, dtype, gate, shape=(2, 24, 9, 13), layout="contiguous", seed=0):
    """gated_blend with gate layout GATES[gate] on x of `shape`, forward and all three gradients, against
    the reference; layout (see with_layout) applies to x, s, g and the upstream gradient."""
    gen = torch.Generator().manual_seed(seed)
    x, s, dz = (with_layout(torch.randn(shape, generator=gen).to(dev, dtype), layout) for _ in range(3))
    g = with_layout((torch.randn(GATES[gate](*shape), generator=gen) * 2).to(dev, dtype), layout)

    def run(bk):
        inputs = [t.detach().requires_grad_(True) for t in (x, s, g)]
        z = csfr.ops.gated_blend(*inputs, backend=bk)
        z.backward(dz)
        return z, [t.grad for t in inputs]

    z, grads = run(backend)
    ref_z, ref_grads = run("torch")
    assert z.shape == x.shape
    assert_close(z, ref_z, 1, "z")
    # dx, ds are elementwise; dg sums over the dimensions the gate is broadcast along
    for name, got, want, n in zip("xsg", grads, ref_grads, (1, 1, x.numel() // g.numel())):
        assert got.shape == want.shape, f"d{name}"
        partials = _rounded_gate_partials(x, s, g, dz) if name == "g" else None
        assert_close(got, want, n, f"d{name}", partials)


def _rounded_gate_partials(x, s, g, dz):
    """A gate the kernels cannot take as it is (shared over the batch, or one value per image) is
    expanded to [B,C,1], [B,1,N] or [B,C,N] first; the kernel rounds that expanded gate's gradient
    to the dtype and autograd sums it back. Returns, per element of g, the sum of |those partials|
    (None when g needs no expansion, or in fp32/fp64 where the rounding is covered already)."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        return None
    b, c = x.shape[:2]
    canonical = _canonical_gate(x, g)
    if canonical.numel() == g.numel():
        return None
    part = canonical.detach().requires_grad_(True)
    sizes = (b, c, -1)
    reference.gated_blend(x.reshape(sizes), s.reshape(sizes), part).backward(dz.reshape(sizes))
    g32 = g.detach().float().requires_grad_(True)
    (bound,) = torch.autograd.grad(_canonical_gate(x, g32), g32, part.grad.abs().float())
    return bound


def _label_kernels_reference(feats, labels, k, mu, delta_v, g, coef, a, ignore_index):
    """The kernel contract's math (docs/kernels.md) in float64 with a one-hot: (sums, counts), (coef, hinge,
    wsum, wcount), pixel_grad with and without its direct term. feats [B,D,N], labels [B,N]."""
    f = feats.double()
    valid = (labels != ignore_index) & (labels >= 0) & (labels < k)
    onehot = torch.nn.functional.one_hot(torch.where(valid, labels, 0), k).double() * valid[..., None]  # [B,N,K]
    sums, counts = torch.einsum("bdn,bnk->bkd", f, onehot), onehot.sum(1)
    m = torch.einsum("bnk,bkd->bdn", onehot, mu.double())  # each pixel's centroid
    diff = (f - m) * valid[:, None]
    r = diff.norm(dim=1)
    h = (r - delta_v).clamp_min(0) * valid
    c = torch.where(r > 0, 2 * h / torch.where(r > 0, r, 1), 0)
    pass_ = (c, torch.einsum("bn,bnk->bk", h * h, onehot), torch.einsum("bdn,bn,bnk->bkd", diff, c, onehot),
             torch.einsum("bn,bnk->bk", c, onehot))
    through = torch.einsum("bnk,bkd->bdn", onehot, g.double())
    direct = torch.einsum("bnk,bk->bn", onehot, a.double()) * coef.double()
    return (sums, counts), pass_, through + direct[:, None] * diff, through


def compare_label_kernels(backend, dtype, shape, case="ignore", ignore_index=255, seed=0):
    """segment_sum, cac_pixel_pass and pixel_grad of `backend`, called directly (the operators use them only
    inside their fused ops, pixel_grad not at all on cuda and triton), against the contract's math.
    shape = (B, D, h, w, K); post-ReLU-like features (a common offset) and centroids near them."""
    from csfr.ops.dispatch import kernels

    b, d, h, w, k = shape
    n = h * w
    gen = torch.Generator().manual_seed(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    feats = (torch.rand(b, d, n, generator=gen) + 2).to(dtype)
    labels = make_labels(b, h, w, k, "cpu", case, ignore_index, gen).reshape(b, n).long()
    mu = (torch.rand(b, k, d, generator=gen) + 2).to(acc)
    g, a = torch.randn(b, k, d, generator=gen).to(acc), torch.rand(b, k, generator=gen).to(acc)
    coef = torch.rand(b, n, generator=gen).to(acc)
    (sums, counts), pass_, grad, grad_through = _label_kernels_reference(feats, labels, k, mu, 0.3, g, coef, a,
                                                                         ignore_index)
    kern = kernels(backend)
    got_sums, got_counts = kern.segment_sum(feats, labels, k, ignore_index)
    assert_close(got_sums, sums.to(acc), n, "segment_sum sums")
    assert torch.equal(got_counts.double(), counts), "segment_sum counts"
    for name, got, want in zip(("coef", "hinge", "wsum", "wcount"), kern.cac_pixel_pass(feats, labels, mu, 0.3,
                                                                                       ignore_index), pass_):
        assert_close(got, want.to(acc), n + d, f"cac_pixel_pass {name}")
    assert_close(kern.pixel_grad(feats, labels, g, ignore_index, mu, coef, a), grad.to(dtype), d, "pixel_grad")
    assert_close(kern.pixel_grad(feats, labels, g, ignore_index, None, None, None), grad_through.to(dtype), 1,
                 "pixel_grad without the direct term")
