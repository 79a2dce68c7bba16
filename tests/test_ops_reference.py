"""The reference operators against hand-computed values and the paper's pairwise form."""

import math

import pytest
import torch

from csfr.ops import reference


def test_centroids_hand_computed():
    feats = torch.tensor([[[1.0, 3.0, 10.0, 7.0]]])  # B=1, D=1, N=4
    labels = torch.tensor([[0, 0, 255, 2]])
    mu, n = reference.class_centroids(feats, labels, 4)
    assert mu.flatten().tolist() == [2.0, 0.0, 7.0, 0.0]
    assert n.tolist() == [[2, 0, 1, 0]]
    assert n.dtype == torch.int64


def test_cac_terms_hand_computed():
    # class 0 at x = 0 and 2 (mu 1, distances 1), class 1 at x = 4 (mu 4); D = 1
    feats = torch.tensor([[[0.0, 2.0, 4.0]]])
    labels = torch.tensor([[0, 0, 1]])
    intra, inter = reference.cac_terms(feats, labels, 2, delta_v=0.5, delta_d=2.0)
    # intra: class 0 mean (1 - 0.5)^2 = 0.25, class 1 0 -> mean over 2 classes = 0.125
    assert intra.item() == pytest.approx(0.125)
    # inter: |mu_0 - mu_1| = 3, 2*delta_d = 4 -> (4 - 3)^2 = 1 for both ordered pairs
    assert inter.item() == pytest.approx(1.0)
    loss = reference.cac_loss(feats, labels, 2, 0.5, 2.0, w_intra=2.0, w_inter=3.0)
    assert loss.item() == pytest.approx(2 * 0.125 + 3 * 1.0)


def test_cac_means_over_images_where_defined():
    feats = torch.tensor([[[0.0, 2.0]], [[0.0, 5.0]]])  # image 0: one class, image 1: two classes
    labels = torch.tensor([[0, 0], [0, 1]])
    intra, inter = reference.cac_terms(feats, labels, 2, delta_v=0.0, delta_d=3.0)
    assert intra.item() == pytest.approx((1.0 + 0.0) / 2)  # image 1 has zero spread
    assert inter.item() == pytest.approx((6.0 - 5.0) ** 2)  # only image 1 defines inter


@pytest.mark.parametrize("shape, k", [((2, 5, 4, 6), 3), ((3, 1, 7, 7), 5), ((1, 16, 9, 9), 2)])
def test_pairwise_identity(shape, k):
    """With delta_v = 0 the centroid form equals half the mean pairwise squared distance."""
    feats = torch.randn(shape, dtype=torch.float64)
    labels = torch.randint(0, k, (shape[0], *shape[2:]))
    labels[0, 0] = 255
    intra = reference.cac_terms(feats, labels, k, delta_v=0.0)[0]
    torch.testing.assert_close(intra, reference.cac_loss_pairwise(feats, labels, k))


def test_all_ignore_batch_is_zero_with_zero_grad():
    feats = torch.randn(2, 4, 3, 3, requires_grad=True)
    labels = torch.full((2, 3, 3), 255)
    loss = reference.cac_loss(feats, labels, 3)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(feats.grad, torch.zeros_like(feats))


def test_coincident_points_have_finite_gradients():
    feats = torch.zeros(1, 3, 2, 2, requires_grad=True)  # every distance is 0
    labels = torch.tensor([[[0, 0], [1, 1]]])
    reference.cac_loss(feats, labels, 2, delta_v=0.0).backward()
    assert torch.isfinite(feats.grad).all()


def test_reference_gradcheck_float64():
    feats = torch.randn(2, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 3, 4))
    labels[1, 0] = 255
    assert torch.autograd.gradcheck(lambda f: reference.cac_terms(f, labels, 3, 0.3, 1.0), (feats,))
    assert torch.autograd.gradcheck(lambda f: reference.class_centroids(f, labels, 3)[0], (feats,))
    x, s = (torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    g = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(reference.gated_blend, (x, s, g))


def test_gated_blend_formula():
    x, s = torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 2)
    g = torch.tensor([[[[0.0, math.log(3.0)]]]])
    assert reference.gated_blend(x, s, g).flatten().tolist() == pytest.approx([0.5, 0.75])
