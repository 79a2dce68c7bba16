"""ClassAwareConsistencyLoss and SegmentationCrossEntropy: label handling and agreement with the ops."""

import pytest
import torch
import torch.nn.functional as F

from csfr.losses import ClassAwareConsistencyLoss, SegmentationCrossEntropy, downsample_labels
from csfr.ops import reference


def test_downsample_labels_is_nearest_and_keeps_ignore():
    labels = torch.arange(16).reshape(1, 4, 4)
    labels[0, 0, 0] = 255
    small = downsample_labels(labels, (2, 2))
    assert small.tolist() == [[[255, 2], [8, 10]]]
    assert downsample_labels(labels, (4, 4)) is labels


def test_cac_loss_module_matches_reference_on_downsampled_labels():
    feats = torch.randn(2, 16, 6, 8, requires_grad=True)
    labels = torch.randint(0, 4, (2, 24, 32))
    labels[1, :12] = 255
    loss = ClassAwareConsistencyLoss(4, delta_v=0.1, delta_d=1.0, w_intra=2.0, w_inter=0.5, backend="torch")
    terms = loss(feats, labels)
    small = F.interpolate(labels[:, None].float(), size=(6, 8), mode="nearest")[:, 0].long()
    intra, inter = reference.cac_terms(feats, small, 4, 0.1, 1.0)
    torch.testing.assert_close(terms["cac_intra"], 2.0 * intra)
    torch.testing.assert_close(terms["cac_inter"], 0.5 * inter)
    torch.testing.assert_close(loss.total(feats, labels), 2.0 * intra + 0.5 * inter)
    loss.total(feats, labels).backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_batch_centroids_are_one_centroid_per_class_over_the_batch(backend):
    """centroids="batch": per class, one mean over every image's pixels (pulled together across
    images), pairs of classes present anywhere in the batch pushed apart; the reference's terms on
    the per-class pixel sets pooled over the batch, computed here by hand."""
    torch.manual_seed(0)
    feats = (torch.rand(3, 8, 5, 6) + 2.0).requires_grad_()  # post-ReLU-like, a large common mean
    labels = torch.randint(0, 4, (3, 5, 6))
    labels[0][labels[0] == 3] = 1  # class 3 absent from image 0
    labels[2, :2] = 255
    loss = ClassAwareConsistencyLoss(4, delta_v=0.1, delta_d=1.0, backend=backend, centroids="batch")
    terms = loss(feats, labels)
    f, y = feats.detach().permute(0, 2, 3, 1).reshape(-1, 8), labels.reshape(-1)
    present = [k for k in range(4) if (y == k).any()]
    mu = {k: f[y == k].mean(0) for k in present}
    intra = torch.stack([((f[y == k] - mu[k]).norm(dim=1) - 0.1).clamp_min(0).square().mean() for k in present]).mean()
    inter = torch.stack([(2.0 - (mu[a] - mu[c]).norm()).clamp_min(0).square()
                         for a in present for c in present if a != c]).mean()
    torch.testing.assert_close(terms["cac_intra"], intra)
    torch.testing.assert_close(terms["cac_inter"], inter)
    per_image = ClassAwareConsistencyLoss(4, delta_v=0.1, delta_d=1.0, backend=backend)(feats, labels)
    assert not torch.allclose(per_image["cac_intra"], intra)  # the two definitions do differ here
    (terms["cac_intra"] + terms["cac_inter"]).backward()
    assert torch.isfinite(feats.grad).all() and feats.grad[2, :, 2:].abs().sum() > 0
    with pytest.raises(ValueError, match="unknown cac_centroids 'epoch'; valid: image, batch"):
        ClassAwareConsistencyLoss(4, centroids="epoch")


@pytest.mark.parametrize("labels, match", [
    (torch.zeros(2, 8, dtype=torch.long), r"\[B, H, W\]"),
    (torch.zeros(2, 8, 8), "integer"),
    (torch.zeros(3, 8, 8, dtype=torch.long), "batch"),
])
def test_cac_loss_module_rejects_bad_labels(labels, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ClassAwareConsistencyLoss(4)(torch.randn(2, 8, 4, 4), labels)


def test_cross_entropy_resizes_logits_and_ignores():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[0, 0] = 255
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up, labels, ignore_index=255)
    torch.testing.assert_close(SegmentationCrossEntropy()(logits, labels), expected)
    torch.testing.assert_close(SegmentationCrossEntropy(weight=0.4)(logits, labels), 0.4 * expected)


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = SegmentationCrossEntropy()(logits, torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_mmsegmentation_label_layout_b1hw_is_accepted():
    feats = torch.randn(2, 8, 4, 4)
    labels = torch.randint(0, 3, (2, 16, 16))
    labels[0, :4] = 255
    loss = ClassAwareConsistencyLoss(3, backend="torch")
    expected = loss(feats, labels)
    got = loss(feats, labels[:, None])
    assert got.keys() == expected.keys()
    for key in got:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    logits = torch.randn(2, 3, 4, 4)
    ce = SegmentationCrossEntropy()
    torch.testing.assert_close(ce(logits, labels[:, None]), ce(logits, labels), rtol=0, atol=0)


def test_labels_smaller_than_the_features_are_refused_not_upsampled():
    with pytest.raises(ValueError, match="labels 4x8 are smaller than the features 6x8"):
        ClassAwareConsistencyLoss(3)(torch.randn(1, 8, 6, 8), torch.zeros(1, 4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="smaller than the features"):
        downsample_labels(torch.zeros(1, 8, 3, dtype=torch.long), (4, 4))
