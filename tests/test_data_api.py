"""The contract the engine relies on: names, class metadata, the sample dict, the per-item generator."""

import numpy as np
import pytest

from csfr.data import DATASETS, SyntheticScenes, build_dataset, names

CLASS_COUNTS = {"cityscapes": 19, "ade20k": 150, "coco_stuff10k": 171, "coco_stuff164k": 171,
                "pascal_context59": 59, "pascal_context60": 60}


def test_names():
    assert names() == sorted([*CLASS_COUNTS, "synthetic"])


@pytest.mark.parametrize("name", sorted(CLASS_COUNTS))
def test_class_metadata(name):
    cls = DATASETS[name]
    k = CLASS_COUNTS[name]
    assert cls.num_classes == len(cls.class_names) == len(set(cls.class_names)) == k
    assert cls.palette.shape == (k, 3) and cls.palette.dtype == np.uint8
    assert len(set(map(tuple, cls.palette.tolist()))) == k
    assert cls.ignore_index == 255 and cls.splits and set(cls.expected_counts) == set(cls.splits)


def test_sample_dict_without_transform():
    ds = build_dataset("synthetic", None, "train", num_classes=4, size=(20, 24), length=3, seed=2)
    item = ds[1]
    assert set(item) == {"image", "label", "meta"}
    assert item["image"].shape == (20, 24, 3) and item["image"].dtype == np.uint8
    assert item["label"].shape == (20, 24) and item["label"].dtype == np.int64
    assert {"image_path", "label_path", "index"} <= set(item["meta"]) and item["meta"]["index"] == 1
    assert ds[-1]["meta"]["index"] == 2
    with pytest.raises(IndexError, match="out of range"):
        ds[3]


def draws(image, label, rng):
    return {"draws": rng.integers(0, 2**62, 4)}


@pytest.mark.parametrize("seed, epoch, index", [(0, 0, 0), (3, 1, 2), (7, 5, 1)])
def test_item_generator_is_pcg64_of_seed_epoch_index(seed, epoch, index):
    ds = SyntheticScenes("train", num_classes=3, size=8, length=3, seed=seed, transform=draws)
    ds.set_epoch(epoch)
    expected = np.random.Generator(np.random.PCG64([seed, epoch, index])).integers(0, 2**62, 4)
    np.testing.assert_array_equal(ds[index]["draws"], expected)
    np.testing.assert_array_equal(ds[index]["draws"], expected)  # reading again gives the same
