"""Whole, sliding-window, multi-scale and flipped inference."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from csfr.engine.inference import _windows, label_maps, predict, slide_logits


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
    assert _windows(4, 4, 1) == [0]  # one window fits exactly
    assert _windows(7, 4, 4) == [0, 3]  # the stride would overshoot: the last window is pulled back


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


class Lopsided(nn.Module):
    """A 3x3 convolution with random weights plus a left-to-right ramp: neither flip- nor scale-equivariant,
    so skipping the resize or mirroring along the wrong axis changes its test-time-augmented output."""

    def __init__(self, k=4):
        super().__init__()
        self.conv = nn.Conv2d(3, k, 3, padding=1)

    def forward(self, x):
        ramp = torch.linspace(0, 1, x.shape[-1]).expand(x.shape[-2], -1)
        return self.conv(x) + ramp * torch.arange(self.conv.out_channels).view(1, -1, 1, 1)


def test_multi_scale_flip_equals_the_mean_over_hand_built_views():
    torch.manual_seed(0)
    model, image = Lopsided().eval(), torch.randn(2, 3, 16, 12)
    out = (20, 15)

    def view(size, mirrored):
        x = F.interpolate(image, size, mode="bilinear", align_corners=False) if size != (16, 12) else image
        logits = model(torch.flip(x, dims=[3])).flip(3) if mirrored else model(x)
        return F.interpolate(logits, out, mode="bilinear", align_corners=False).softmax(1)

    views = [view(size, mirrored) for size in [(8, 6), (16, 12), (24, 18)] for mirrored in (False, True)]
    expected = torch.stack(views).mean(0)
    got = predict(model, image, out, scales=(0.5, 1.0, 1.5), flip=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # the augmented views really differ from each other, so each one is checked above
    assert (views[0] - views[2]).abs().max() > 1e-2 and (views[2] - views[3]).abs().max() > 1e-2


def test_label_maps_apply_every_eval_setting():
    torch.manual_seed(0)
    model, image, out = Lopsided().eval(), torch.randn(1, 3, 16, 12), (20, 15)
    cfg = {"mode": "slide", "crop_size": (8, 8), "stride": (5, 5), "scales": (0.75, 1.25), "flip": True}
    expected = predict(model, image, out, "slide", (8, 8), (5, 5), (0.75, 1.25), True).argmax(1)
    assert torch.equal(label_maps(model, image, out, cfg), expected)
    unflipped = predict(model, image, out, "slide", (8, 8), (5, 5), (0.75, 1.25), False).argmax(1)
    assert not torch.equal(unflipped, expected)  # so dropping the flip would be seen
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = predict(model, image, out, "slide", (8, 8), (5, 5), (0.75, 1.25), True).argmax(1)
    assert torch.equal(label_maps(model, image, out, cfg, amp="bfloat16"), low)


def test_slide_windows_of_a_position_dependent_model_against_hand_built_sums():
    torch.manual_seed(0)
    model = Lopsided().eval()
    small = torch.randn(1, 3, 5, 6)  # smaller than the window: padded to 8x8 once, then cropped
    padded = F.pad(small, (0, 2, 0, 3))
    torch.testing.assert_close(slide_logits(model, small, (8, 8), (4, 4)), model(padded)[:, :, :5, :6])
    wide = torch.randn(1, 3, 8, 12)  # windows at x = 0 and 4, overlapping in columns 4..7
    total = torch.zeros(1, 4, 8, 12)
    total[..., :8] += model(wide[..., :8])
    total[..., 4:] += model(wide[..., 4:])
    count = torch.tensor([1.0] * 4 + [2.0] * 4 + [1.0] * 4)
    torch.testing.assert_close(slide_logits(model, wide, (8, 8), (4, 4)), total / count)


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="eval.mode must be whole or slide, got 'tiles'"):
        predict(Pointwise().eval(), torch.randn(1, 3, 8, 8), (8, 8), mode="tiles")
