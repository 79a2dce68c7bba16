"""The synthetic scenes: deterministic, any size, and not solvable from colour alone."""

import hashlib

import numpy as np
import pytest

from csfr.data import SyntheticScenes, build_dataset


def test_deterministic_given_seed_split_and_index():
    a, b = SyntheticScenes("train", 6, 48, seed=3), SyntheticScenes("train", 6, 48, seed=3)
    assert np.array_equal(a[5]["image"], b[5]["image"]) and np.array_equal(a[5]["label"], b[5]["label"])
    assert not np.array_equal(a[5]["image"], SyntheticScenes("train", 6, 48, seed=4)[5]["image"])
    assert not np.array_equal(a[5]["image"], SyntheticScenes("val", 6, 48, seed=3)[5]["image"])


def test_any_size_and_class_count():
    ds = build_dataset("synthetic", None, "val", num_classes=5, size=(37, 53), length=3)
    item = ds[2]
    assert item["image"].shape == (37, 53, 3) and item["image"].dtype == np.uint8
    assert item["label"].shape == (37, 53) and item["label"].dtype == np.int64
    assert len(ds) == 3 and ds.num_classes == 5 == len(ds.class_names) and len(ds.palette) == 5
    assert set(np.unique(np.concatenate([ds[i]["label"].ravel() for i in range(3)]))) <= set(range(5))
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        SyntheticScenes("train", num_classes=1)


def colours_and_labels(ds, indices):
    items = [ds[i] for i in indices]
    colour = np.concatenate([(it["image"] // 16).reshape(-1, 3).astype(np.int64) for it in items]) @ [256, 16, 1]
    return colour, np.concatenate([it["label"].ravel() for it in items])


def test_colour_alone_is_ambiguous_within_a_class_pair():
    """A per-pixel colour classifier (the majority class of each quantised colour, fitted on 30
    scenes, scored on 30 others) finds the class pair but not the class inside it."""
    ds = SyntheticScenes("train", num_classes=8, size=64, length=60)
    fit_colour, fit_label = colours_and_labels(ds, range(30))
    table = np.zeros((4096, 8), np.int64)
    np.add.at(table, (fit_colour, fit_label), 1)
    colour, label = colours_and_labels(ds, range(30, 60))
    guess = table.argmax(1)[colour]
    pair_accuracy = np.mean(guess // 2 == label // 2)
    within_pair = np.mean(guess[guess // 2 == label // 2] == label[guess // 2 == label // 2])
    assert pair_accuracy > 0.75  # colour does tell the pairs apart
    assert within_pair < 0.6  # but inside a pair it is close to a coin flip
    assert np.mean(guess == label) < 0.6  # so per-pixel colour cannot reach high accuracy


def test_default_scenes_are_unchanged_by_the_modes_option():
    """Digest of scenes drawn before the "modes" option existed: the default must not move."""
    digest = hashlib.sha256()
    for split in ("train", "val"):
        ds = SyntheticScenes(split, 8, 96, seed=3)
        for i in range(6):
            image, label = ds.scene(i)
            digest.update(image.tobytes())
            digest.update(label.tobytes())
    assert digest.hexdigest()[:16] == "b3adec945784d9ad"
    a, b = SyntheticScenes("val", 5, 40, seed=7), SyntheticScenes("val", 5, 40, seed=7, scenes="modes")
    assert np.array_equal(a[1]["label"], b[1]["label"])  # same layouts, other looks
    assert not np.array_equal(a[1]["image"], b[1]["image"])
    with pytest.raises(ValueError, match="unknown scenes 'blobs'; valid: pairs, modes"):
        SyntheticScenes("train", scenes="blobs")


def colour_spread(ds, indices):
    """(mean intra-class RMS colour spread, mean distance between class mean colours) over pixels."""
    colour = np.concatenate([ds[i]["image"].reshape(-1, 3) for i in indices]).astype(np.float64)
    label = np.concatenate([ds[i]["label"].ravel() for i in indices])
    means = np.stack([colour[label == k].mean(0) for k in range(ds.num_classes)])
    spread = np.mean([np.sqrt(((colour[label == k] - means[k]) ** 2).sum(1).mean()) for k in range(ds.num_classes)])
    inter = np.linalg.norm(means[:, None] - means[None], axis=-1).sum() / (ds.num_classes * (ds.num_classes - 1))
    return spread, inter


def test_modes_give_each_class_several_looks_and_keep_pairs_confusable():
    pairs = SyntheticScenes("train", num_classes=8, size=64, length=40)
    modes = SyntheticScenes("train", num_classes=8, size=64, length=40, scenes="modes")
    (spread_p, inter_p), (spread_m, inter_m) = colour_spread(pairs, range(40)), colour_spread(modes, range(40))
    assert spread_m > 1.1 * spread_p  # three colours per class: larger intra-class variation
    assert inter_m / spread_m < 0.8 * inter_p / spread_p  # and class mean colours stand less apart
    fit_colour, fit_label = colours_and_labels(modes, range(20))
    table = np.zeros((4096, 8), np.int64)
    np.add.at(table, (fit_colour, fit_label), 1)
    colour, label = colours_and_labels(modes, range(20, 40))
    guess = table.argmax(1)[colour]
    same_pair = guess // 2 == label // 2
    assert np.mean(guess[same_pair] == label[same_pair]) < 0.6  # members share colours mode by mode
    degrees = np.round(np.degrees(modes._angle)).astype(int) % 180  # [class, mode] texture orientation
    assert all(len(set(row)) == 3 for row in degrees) and np.array_equal(degrees[0], degrees[1])
    assert modes.class_names[:2] == ("pair0_stripes0-60-120", "pair0_checker")  # the one cue inside a pair
