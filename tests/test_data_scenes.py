"""The synthetic scenes: deterministic, any size, and not solvable from colour alone."""

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
