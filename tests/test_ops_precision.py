"""fp32 accuracy of cac_loss on features like the real ones: post-ReLU, with a large common offset.

Real C-S features share a large mean vector, so centroid distances computed through
|a|^2 + |c|^2 - 2 a.c, or gradients through sum(coef f) - sum(coef) mu, cancel catastrophically
in fp32. Every fused backend must stay within 1e-4 relative of the float64 reference, forward
and gradient of each term, for offsets 0 to 30. `precision_errors` takes a (backend, device) pair, so a
new backend joins by adding it to BACKENDS.
"""

import pytest
import torch

import csfr

# (backend, device): the CPU-side backends here, the GPU ones on CUDA tensors (marked cuda: run by gpu-check)
BACKENDS = [pytest.param(("cpu", "cpu"), id="cpu"), pytest.param(("triton", "cpu"), id="triton"),
            pytest.param(("cuda_emulated", "cpu"), id="cuda_emulated"),
            pytest.param(("cuda", "cuda"), id="cuda-gpu", marks=pytest.mark.cuda),
            pytest.param(("triton", "cuda"), id="triton-gpu", marks=pytest.mark.cuda)]
REL_TOL = 1e-4
DELTA_V = 0.1


def delta_d(d):
    """Inter margin growing with D like the centroid noise (0.5 sqrt(D / n_k)), so pairs are active."""
    return 1.5 * (d / 64) ** 0.5


def blocky_labels(b, h, w, k, block=4):
    """Spatially coherent labels (blocks of one class, as real label maps), some pixels ignored."""
    coarse = torch.randint(0, k, (b, -(-h // block), -(-w // block)))
    labels = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :h, :w].clone()
    labels[torch.rand(b, h, w) < 0.05] = 255
    return labels


def offset_features(labels, d, k, offset, relu):
    """float64 features: common offset + a per-class mean (spread so some class pairs lie inside the
    inter margin 2*delta_d and some outside) + noise; optionally through a ReLU."""
    b, h, w = labels.shape
    spread = 2 * delta_d(d) / (2 * d) ** 0.5 * (0.1 + 0.8 * torch.rand(k, 1, dtype=torch.float64))
    class_means = torch.randn(k, d, dtype=torch.float64) * spread
    feats = offset + class_means[labels.clamp(max=k - 1)].permute(0, 3, 1, 2)
    feats = feats + 0.5 * torch.randn(b, d, h, w, dtype=torch.float64)
    return feats.relu() if relu else feats


def _terms_and_grads(feats, labels, k, backend):
    """The (intra, inter) terms and the gradient of each term with respect to the features."""
    f = feats.detach().requires_grad_(True)
    terms = csfr.ops.cac_terms(f, labels, k, DELTA_V, delta_d(f.shape[1]), backend=backend)
    grads = [torch.autograd.grad(t, f, retain_graph=True)[0] for t in terms]
    return terms.detach(), grads


def precision_errors(backend_device, feats64, labels, k):
    """Relative errors of a (backend, device) pair in fp32 against the float64 reference (on the CPU):
    per term, forward |t - t64| / |t64| and gradient max|g - g64| / max|g64|."""
    backend, device = backend_device
    terms64, grads64 = _terms_and_grads(feats64, labels, k, "torch")
    terms32, grads32 = _terms_and_grads(feats64.float().to(device), labels.to(device), k, backend)
    terms32, grads32 = terms32.cpu(), [g.cpu() for g in grads32]
    errors = {}
    for j, name in enumerate(("intra", "inter")):
        assert terms64[j] != 0 and grads64[j].abs().max() > 0, f"{name} term inactive: the case tests nothing"
        errors[f"{name} forward"] = float((terms32[j].double() - terms64[j]).abs() / terms64[j].abs())
        errors[f"{name} gradient"] = float((grads32[j].double() - grads64[j]).abs().max() / grads64[j].abs().max())
    return errors


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offset", [0.0, 3.0, 10.0, 30.0])
def test_offset_features_match_float64(backend, offset):
    labels = blocky_labels(2, 8, 12, 5)
    errors = precision_errors(backend, offset_features(labels, 64, 5, offset, relu=False), labels, 5)
    assert max(errors.values()) <= REL_TOL, errors


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [64, 512])
@pytest.mark.parametrize("offset", [0.0, 10.0])
def test_post_relu_features_match_float64(backend, d, offset):
    labels = blocky_labels(2, 8, 8, 4)
    errors = precision_errors(backend, offset_features(labels, d, 4, offset, relu=True), labels, 4)
    assert max(errors.values()) <= REL_TOL, errors
