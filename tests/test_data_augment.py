"""Transforms keep image and label aligned, are seeded, and give the same batches in any worker."""

import pickle

import numpy as np
import pytest
import torch

from csfr import configs
from csfr.data import SyntheticScenes, collate, test_pipeline, train_pipeline
from csfr.data.transforms import (
    MEAN,
    STD,
    pad,
    photometric_distortion,
    random_crop,
    random_flip,
    random_rescale,
)
from csfr.engine.builders import build_datasets


def painted(h=60, w=80):
    """An image whose red channel encodes the label (label k -> red 40k), blocks of 4 classes."""
    label = np.zeros((h, w), np.int64)
    label[:, w // 2:] = 1
    label[h // 2:, :] += 2
    label[: h // 5, : w // 5] = 255
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.where(label == 255, 250, label * 40)
    return image, label


def red_to_label(image):
    return np.where(image[..., 0] >= 245, 255, np.rint(image[..., 0] / 40)).astype(np.int64)


@pytest.mark.parametrize("seed", range(6))
def test_rescale_crop_flip_pad_keep_the_painted_label(seed):
    rng = np.random.default_rng(seed)
    image, label = painted()
    image, label = random_rescale(image, label, rng, base_size=(80, 60), ratio_range=(0.5, 2.0))
    image, label = random_crop(image, label, rng, crop_size=(48, 48), cat_max_ratio=0.75)
    image, label = random_flip(image, label, rng, prob=0.5)
    image, label = pad(image, label, rng, crop_size=(48, 48))
    assert image.shape[:2] == label.shape == (48, 48)
    inside = image.any(-1) | (label != 255)  # pixels of the picture (pad: image 0, label 255)
    # nearest label vs bilinear image may disagree along region borders only: compare the interior
    p = np.pad(label, 1, mode="edge")
    interior = inside & (p[:-2, 1:-1] == label) & (p[2:, 1:-1] == label) & (p[1:-1, :-2] == label) & \
        (p[1:-1, 2:] == label)
    assert interior.sum() > 100
    assert (red_to_label(image)[interior] == label[interior]).mean() > 0.99


def test_pad_uses_zero_and_ignore():
    image, label = pad(np.full((3, 4, 3), 9, np.uint8), np.ones((3, 4), np.int64), None, crop_size=(5, 6))
    assert image.shape == (5, 6, 3) and (image[3:] == 0).all() and (label[:, 4:] == 255).all()


def test_flip_mirrors_both():
    image, label = painted()
    fimage, flabel = random_flip(image, label, np.random.default_rng(0), prob=1.0)
    assert np.array_equal(fimage, image[:, ::-1]) and np.array_equal(flabel, label[:, ::-1])


def test_cat_max_ratio_redraws_crops_dominated_by_one_class():
    label = np.zeros((100, 100), np.int64)
    label[:, 90:] = 1  # a 50-wide crop is mostly class 0 unless it starts at column 46 or later

    def balanced_share(ratio):
        rng = np.random.default_rng(0)
        crops = [random_crop(np.zeros((100, 100, 3), np.uint8), label, rng, (50, 50), cat_max_ratio=ratio)[1]
                 for _ in range(50)]
        return np.mean([np.bincount(c.ravel(), minlength=2).max() / c.size < 0.9 for c in crops])

    assert balanced_share(1.0) < 0.25 and balanced_share(0.9) > 0.5


class ScriptedRng:
    """Stands in for np.random.Generator: returns the scripted draws in order, checking each call's range."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def _next(self, kind, low, high):
        name, value = self.draws.pop(0)
        assert name == kind and low <= value <= high, (kind, low, high, value)
        return value

    def integers(self, low, high=None):
        low, high = (0, low) if high is None else (low, high)
        return self._next("int", low, high - 1)

    def uniform(self, low, high):
        return self._next("uniform", low, high)


OFF, ON = ("int", 0), ("int", 1)


def colourful(h=24, w=32):
    return np.random.default_rng(0).integers(30, 226, (h, w, 3)).astype(np.uint8)


def test_photometric_brightness_and_contrast_are_the_documented_affine_maps():
    image, label = colourful(), np.zeros((24, 32), np.int64)
    # brightness +20; contrast first, by 1.5; no saturation, no hue
    rng = ScriptedRng(ON, ("uniform", 20.0), ON, ON, ("uniform", 1.5), OFF, OFF)
    out, same = photometric_distortion(image, label, rng)
    brightened = np.clip(image.astype(np.float32) + 20, 0, 255).astype(np.uint8)
    expected = np.clip(brightened.astype(np.float32) * 1.5, 0, 255).astype(np.uint8)
    assert same is label and not rng.draws
    # Pillow's 8-bit HSV round trip (always taken) moves a channel by a few levels at most
    error = np.abs(out.astype(int) - expected)
    assert error.mean() < 0.5 and error.max() <= 6 and (out.astype(int) - image).mean() > 20


def test_photometric_saturation_and_hue():
    grey = np.full((4, 4, 3), 128, np.uint8)
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    image = np.concatenate([grey, red], 1)
    # no brightness; contrast last and off; saturation x0.5; hue +30 OpenCV units (= +60 degrees)
    rng = ScriptedRng(OFF, OFF, ON, ("uniform", 0.5), ON, ("int", 30), OFF)
    out, _ = photometric_distortion(image, np.zeros((4, 8), np.int64), rng, hue_delta=30)
    assert not rng.draws
    assert np.array_equal(out[:, :4], grey)  # grey has no saturation and no hue to change
    r, g, b = out[0, 4].astype(int)
    # red at half saturation (255, 128, 128) turned by +60 degrees -> yellow at half saturation (255, 255, 128)
    assert abs(r - 255) <= 3 and abs(g - 255) <= 6 and abs(b - 128) <= 3


def test_photometric_distortion_changes_colour_only():
    image, label = colourful(), np.zeros((24, 32), np.int64)
    changed = 0
    for seed in range(8):
        out, same = photometric_distortion(image, label, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8 and same is label
        changed += int(np.abs(out.astype(int) - image).mean() > 2)
    assert changed >= 6  # each of 4 steps applies with p = 0.5: all off in 1/16 of the draws


def test_pipelines_normalise_and_are_reproducible():
    image, label = painted()
    train = train_pipeline((80, 60), (32, 32), (0.5, 2.0))
    a = train(image, label, np.random.default_rng(7))
    b = train(image, label, np.random.default_rng(7))
    assert a["image"].shape == (3, 32, 32) and a["image"].dtype == np.float32 and a["label"].dtype == np.int64
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    c = pickle.loads(pickle.dumps(train))(image, label, np.random.default_rng(7))  # as a spawned worker gets it
    assert np.array_equal(a["image"], c["image"]) and np.array_equal(a["label"], c["label"])
    test = test_pipeline()(image, label, None)
    np.testing.assert_allclose(test["image"][:, 0, 0], (image[0, 0] - MEAN) / STD, rtol=1e-6)
    resized = test_pipeline((40, 30))(image, label, None)
    assert resized["image"].shape == (3, 30, 40) and resized["label"].shape == label.shape


def batches(ds, workers):
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=collate)
    return [(b["image"], b["label"]) for b in loader]


def test_worker_count_does_not_change_the_batches_and_epochs_do():
    ds = SyntheticScenes("train", num_classes=4, size=40, length=6, seed=1,
                         transform=train_pipeline((40, 40), (24, 24), (0.5, 2.0)))
    zero, two, again = batches(ds, 0), batches(ds, 2), batches(ds, 2)
    for (ia, la), (ib, lb), (ic, lc) in zip(zero, two, again):
        assert torch.equal(ia, ib) and torch.equal(la, lb) and torch.equal(ib, ic)
    ds.set_epoch(1)
    assert not torch.equal(batches(ds, 0)[0][0], zero[0][0])


def test_collate_shapes_and_mismatch_error():
    ds = SyntheticScenes("val", num_classes=3, size=(20, 30), length=2)
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 20, 30) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (2, 20, 30) and batch["label"].dtype == torch.int64
    assert [m["index"] for m in batch["meta"]] == [0, 1]
    other = SyntheticScenes("val", num_classes=3, size=16, length=1)[0]
    with pytest.raises(ValueError, match="items differ in size"):
        collate([ds[0], other])


@pytest.mark.parametrize("flip", [True, False])
def test_the_config_switches_the_flip(flip):
    """data.flip reaches the training pipeline: with it off, no item of 12 is ever mirrored."""
    config = configs.resolve("synthetic", [f"data.flip={str(flip).lower()}", "data.photometric=false",
                                           "data.ratio_range=[1.0,1.0]", "data.options.size=64",
                                           "data.crop_size=[64,64]", "data.base_size=[64,64]"])
    train, _ = build_datasets(config)
    mirrored = 0
    for i in range(12):
        label = train.scene(i)[1]
        item = train[i]["label"]
        assert np.array_equal(item, label) or np.array_equal(item, label[:, ::-1])
        mirrored += not np.array_equal(item, label)
    assert (mirrored > 0) == flip
