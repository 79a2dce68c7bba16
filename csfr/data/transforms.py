"""Augmentation as pure functions of (image HxWx3 uint8, label HxW int64, rng) -> (image, label).

The steps follow MMSegmentation's training pipeline (RandomResize, RandomCrop with cat_max_ratio,
RandomFlip, PhotoMetricDistortion, Pad, Normalize). Images are resized bilinearly, labels only with
NEAREST. `train_pipeline` / `test_pipeline` compose them into picklable callables returning
{"image": float32 3xHxW (ImageNet-normalised), "label": int64 HxW}.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from PIL import Image

from csfr.data.base import IGNORE_INDEX

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def scale_factor(height: int, width: int, base_size: int | tuple[int, int], ratio: float = 1.0) -> float:
    """Keep-ratio factor: an int base makes the long side base*ratio; a (long, short) pair fits the
    image inside (long*ratio, short*ratio) as MMSegmentation's Resize(keep_ratio=True) does."""
    if isinstance(base_size, int):
        return base_size * ratio / max(height, width)
    long_side, short_side = max(base_size), min(base_size)
    return min(long_side * ratio / max(height, width), short_side * ratio / min(height, width))


def resize(image: np.ndarray, label: np.ndarray | None, factor: float):
    """Scale image (bilinear) and label (nearest) by `factor`, keeping the aspect ratio."""
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    if label is not None:
        label = np.asarray(Image.fromarray(label.astype(np.int32)).resize(size, Image.NEAREST)).astype(np.int64)
    return image, label


def random_rescale(image, label, rng, base_size, ratio_range=(0.5, 2.0)):
    """Resize by a ratio drawn uniformly from `ratio_range` around `base_size` (see scale_factor)."""
    ratio = rng.uniform(*ratio_range)
    return resize(image, label, scale_factor(*image.shape[:2], base_size, ratio))


def random_crop(image, label, rng, crop_size, cat_max_ratio=1.0, ignore_index=IGNORE_INDEX):
    """Crop (h, w) at a random offset (the whole side where the image is smaller). With
    cat_max_ratio < 1, redraw up to 10 times until no class covers more than that share of the
    crop's labelled pixels (and at least two classes are present); the 10th draw is kept anyway."""
    ch, cw = _pair(crop_size)
    h, w = label.shape
    for _ in range(10):
        top, left = rng.integers(0, max(h - ch, 0) + 1), rng.integers(0, max(w - cw, 0) + 1)
        crop = label[top:top + ch, left:left + cw]
        if cat_max_ratio >= 1.0:
            break
        counts = np.bincount(crop[crop != ignore_index].ravel())
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return image[top:top + ch, left:left + cw], crop


def pad(image, label, rng, crop_size, ignore_index=IGNORE_INDEX):
    """Pad bottom and right up to crop_size: image with 0, label with ignore_index."""
    ch, cw = _pair(crop_size)
    h, w = label.shape
    if h >= ch and w >= cw:
        return image, label
    extra = ((0, max(ch - h, 0)), (0, max(cw - w, 0)))
    return (np.pad(image, (*extra, (0, 0))),
            np.pad(label, extra, constant_values=ignore_index))


def random_flip(image, label, rng, prob=0.5):
    """Horizontal flip with probability `prob`."""
    if rng.random() < prob:
        return image[:, ::-1], label[:, ::-1]
    return image, label


def _affine(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image, label, rng, brightness_delta=32, contrast_range=(0.5, 1.5),
                           saturation_range=(0.5, 1.5), hue_delta=18):
    """MMSegmentation's PhotoMetricDistortion: brightness, then contrast before or after (random
    order) saturation and hue in HSV; each applied with probability 0.5. hue_delta is in OpenCV
    units (hue range 0..180), rescaled to Pillow's 0..255."""
    if rng.integers(2):
        image = _affine(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = bool(rng.integers(2))

    def contrast(img):
        return _affine(img, alpha=rng.uniform(*contrast_range)) if rng.integers(2) else img

    if contrast_first:
        image = contrast(image)
    hsv = np.array(Image.fromarray(image).convert("HSV"))
    if rng.integers(2):
        hsv[..., 1] = _affine(hsv[..., 1], alpha=rng.uniform(*saturation_range))
    if rng.integers(2):
        shift = round(rng.integers(-hue_delta, hue_delta + 1) * 256 / 180)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % 256
    image = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    if not contrast_first:
        image = contrast(image)
    return image, label


def normalize(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> float32 3xHxW, ImageNet mean/std."""
    return np.ascontiguousarray(((image.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1))


class Pipeline:
    """Runs steps (image, label, rng) -> (image, label) in order, then normalises."""

    def __init__(self, *steps):
        self.steps = steps

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> dict:
        for step in self.steps:
            image, label = step(image, label, rng)
        return {"image": normalize(image), "label": np.ascontiguousarray(label, dtype=np.int64)}

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(map(repr, self.steps))})"


def train_pipeline(base_size, crop_size, ratio_range=(0.5, 2.0), cat_max_ratio=0.75, flip=True,
                   photometric=True, ignore_index=IGNORE_INDEX) -> Pipeline:
    """rescale (ratio_range around base_size) -> crop (cat_max_ratio) -> flip -> photometric -> pad."""
    steps = [partial(random_rescale, base_size=base_size, ratio_range=ratio_range),
             partial(random_crop, crop_size=crop_size, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index)]
    if flip:
        steps.append(random_flip)
    if photometric:
        steps.append(photometric_distortion)
    steps.append(partial(pad, crop_size=crop_size, ignore_index=ignore_index))
    return Pipeline(*steps)


def _resize_image(image, label, rng, base_size):
    return resize(image, None, scale_factor(*image.shape[:2], base_size))[0], label


def test_pipeline(base_size=None) -> Pipeline:
    """Normalise only; with base_size, the image (not the label: scoring is done at the original
    resolution) is first resized keeping its ratio (see scale_factor)."""
    return Pipeline(*([partial(_resize_image, base_size=base_size)] if base_size is not None else []))


test_pipeline.__test__ = False  # not a pytest test, although its name starts with test_
