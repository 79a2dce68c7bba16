"""Whole, sliding-window, multi-scale and flipped inference."""

import torch
from torch import nn

from csfr.engine.inference import _windows, predict, slide_logits


class Pointwise(nn.Module):
    """A 1x1 convolution: its output at a pixel depends on that pixel only, so any tiling agrees."""

    def __init__(self, k=4):
        super().__init__()
        self.conv = nn.Conv2d(3, k, 1)

    def forward(self, x):
        return self.conv(x)


def test_windows_cover_and_end_flush():
    assert _windows(10, 4, 3) == [0, 3, 6]
    assert _windows(11, 4, 3) == [0, 3, 6, 7]
    assert _windows(3, 4, 3) == [0]


def test_slide_equals_whole_for_a_pointwise_model():
    torch.manual_seed(0)
    model, image = Pointwise().eval(), torch.randn(2, 3, 23, 31)
    assert torch.allclose(slide_logits(model, image, (8, 10), (5, 7)), model(image), atol=1e-6)


def test_slide_pads_images_smaller_than_the_window():
    model, image = Pointwise().eval(), torch.randn(1, 3, 5, 6)
    out = slide_logits(model, image, (8, 8), (4, 4))
    assert out.shape == (1, 4, 5, 6) and torch.allclose(out, model(image), atol=1e-6)


def test_predict_averages_probabilities_at_the_label_size():
    model, image = Pointwise().eval(), torch.randn(1, 3, 16, 16)
    probs = predict(model, image, (16, 16))
    assert torch.allclose(probs, model(image).softmax(1), atol=1e-6)
    flipped = predict(model, image, (16, 16), flip=True)
    assert torch.allclose(flipped, probs, atol=1e-6)  # a pointwise model is flip-equivariant
    multi = predict(model, image, (32, 32), scales=(0.5, 1.0, 1.5), flip=True, mode="slide", crop=(8, 8),
                    stride=(6, 6))
    assert multi.shape == (1, 4, 32, 32)
    assert torch.allclose(multi.sum(1), torch.ones(1, 32, 32), atol=1e-5)
