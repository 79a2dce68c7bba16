"""Inputs and comparisons shared by the backend tests (CPU, Triton interpreter)."""

import torch

import csfr

# (rtol, atol) for forward values and for gradients
TOLERANCES = {
    torch.float32: ((1e-4, 1e-5), (1e-3, 1e-6)),
    torch.float16: ((2e-2, 1e-3), (5e-2, 1e-3)),
    torch.bfloat16: ((5e-2, 1e-2), (1e-1, 1e-2)),
}


def make_labels(b, h, w, k, device, case):
    """Label maps with the situations the operators must survive."""
    labels = torch.randint(0, k, (b, h, w), device=device)
    if case == "ignore":
        labels[torch.rand(b, h, w, device=device) < 0.2] = 255
        if k > 2:  # at least one class absent everywhere
            labels[labels == k - 1] = 255
    elif case == "one_class":
        labels[0] = k - 1
    elif case == "all_ignore_image":
        labels[-1] = 255
    elif case == "all_ignore_batch":
        labels.fill_(255)
    return labels


def assert_close(actual, expected, tol):
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol[0], atol=tol[1])


def run_cac(feats, labels, k, backend, upstream):
    feats = feats.detach().requires_grad_(True)
    terms = csfr.ops.cac_terms(feats, labels, k, 0.1, 1.0, backend=backend)
    (terms * upstream).sum().backward()
    return terms.detach(), feats.grad


GATES = {"pixel": (2, 1, 9, 13), "channel": (2, 24, 1, 1), "full": (2, 24, 9, 13), "broadcast": (1, 24, 1, 1),
         "rank3": (24, 1, 1)}


def compare_all_ops(backend, dev, dtype, shape, case="ignore"):
    """cac_loss terms and class_centroids, forward and gradients, against the reference."""
    b, d, h, w, k = shape
    fwd_tol, grad_tol = TOLERANCES[dtype]
    feats = (torch.randn(b, d, h, w, device=dev) * 0.5).to(dtype)
    labels = make_labels(b, h, w, k, dev, case)
    upstream = torch.rand(2, device=dev) + 0.5
    terms, grad = run_cac(feats, labels, k, backend, upstream)
    ref_terms, ref_grad = run_cac(feats, labels, k, "torch", upstream)
    assert grad.dtype == dtype
    assert_close(terms, ref_terms, fwd_tol)
    assert_close(grad, ref_grad, (grad_tol[0], grad_tol[1] * max(1.0, ref_grad.abs().max().item())))

    def centroids(bk):
        f = feats.detach().requires_grad_(True)
        mu, n = csfr.ops.class_centroids(f, labels, k, backend=bk)
        (mu.float() * torch.linspace(-1, 1, d, device=dev)).sum().backward()
        return mu, n, f.grad

    mu, n, g = centroids(backend)
    ref_mu, ref_n, ref_g = centroids("torch")
    assert mu.dtype == dtype and torch.equal(n, ref_n)
    assert_close(mu, ref_mu, fwd_tol)
    assert_close(g, ref_g, grad_tol)


def compare_gated_blend(backend, dev, dtype, gate):
    """gated_blend with gate layout GATES[gate], forward and all three gradients, against the reference."""
    fwd_tol, grad_tol = TOLERANCES[dtype]
    x, s = (torch.randn(2, 24, 9, 13, device=dev).to(dtype) for _ in range(2))
    g = torch.randn(GATES[gate], device=dev).to(dtype)
    dz = torch.randn(2, 24, 9, 13, device=dev).to(dtype)

    def run(bk):
        inputs = [t.detach().requires_grad_(True) for t in (x, s, g)]
        z = csfr.ops.gated_blend(*inputs, backend=bk)
        z.backward(dz)
        return z, [t.grad for t in inputs]

    z, grads = run(backend)
    ref_z, ref_grads = run("torch")
    assert z.dtype == dtype and z.shape == x.shape
    assert_close(z, ref_z, fwd_tol)
    for got, want in zip(grads, ref_grads):
        assert got.shape == want.shape
        assert_close(got, want, (grad_tol[0], grad_tol[1] * max(1.0, want.abs().max().item())))
