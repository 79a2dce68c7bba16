"""Every label-taking operator with an ignore_index other than 255, values and gradients compared to the
reference: -1 (a value no class has), 0 (a class id: those pixels are ignored instead) and K."""

import pytest
import torch
from opcases import compare_all_ops

from csfr.ops import reference


@pytest.mark.parametrize("ignore_index", [-1, 0, 5])
@pytest.mark.parametrize("case", ["ignore", "one_class", "all_ignore_image"])
def test_cac_and_centroids_with_another_ignore_index(ignore_index, case):
    compare_all_ops("cpu", "cpu", torch.float32, (3, 8, 7, 9, 5), case, ignore_index)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, tests/test_ops_gpu.py covers triton")
@pytest.mark.parametrize("ignore_index", [-1, 0, 5])
def test_triton_with_another_ignore_index(ignore_index):
    compare_all_ops("triton", "cpu", torch.float32, (3, 8, 7, 9, 5), "ignore", ignore_index)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_with_ignore_index_minus_one(dtype):
    compare_all_ops("cpu", "cpu", dtype, (2, 24, 9, 11, 19), "blocky", -1)


def test_reference_ignores_exactly_the_ignore_index_pixels():
    """The reference itself: ignore_index=-1 equals dropping those pixels (here, by relabelling them 255)."""
    feats = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 5, 6))
    labels[torch.rand(2, 5, 6) < 0.3] = -1
    as_255 = torch.where(labels == -1, 255, labels)
    for got, want in zip(reference.class_centroids(feats, labels, 3, -1), reference.class_centroids(feats, as_255, 3)):
        assert torch.equal(got, want)
    torch.testing.assert_close(reference.cac_terms(feats, labels, 3, ignore_index=-1),
                               reference.cac_terms(feats, as_255, 3), rtol=1e-12, atol=0)
    # and it changes the answer: counting the -1 pixels as class 0 gives other terms
    as_class0 = torch.where(labels == -1, 0, labels)
    assert not torch.allclose(reference.cac_terms(feats, as_class0, 3), reference.cac_terms(feats, as_255, 3))


def test_one_class_with_ignored_pixels():
    """K = 1: ignored pixels must not be mapped onto a class id that does not exist."""
    feats = torch.tensor([[[1.0, 3.0, 10.0, 5.0]]])  # B=1, D=1, N=4
    labels = torch.tensor([[0, 0, -1, 0]])
    mu, n = reference.class_centroids(feats, labels, 1, -1)
    assert mu.flatten().tolist() == [3.0] and n.tolist() == [[3]]
    intra, inter = reference.cac_terms(feats, labels, 1, delta_v=0.0, ignore_index=-1)
    assert intra.item() == pytest.approx((4 + 0 + 4) / 3) and inter.item() == 0.0
    compare_all_ops("cpu", "cpu", torch.float32, (2, 3, 4, 5, 1), "ignore", -1)
