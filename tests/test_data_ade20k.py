"""ADE20K on a tiny fixture: both accepted roots, 0 -> 255 and k -> k-1 for every value."""

import numpy as np
import pytest
from PIL import Image

from csfr.data import ADE20K, DatasetCountWarning, build_dataset


@pytest.fixture
def root(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for split, folder, count in (("train", "training", 2), ("val", "validation", 1)):
        for n in range(count):
            name = f"ADE_{split}_{n + 1:08d}"
            (base / "images" / folder).mkdir(parents=True, exist_ok=True)
            (base / "annotations" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((12, 13, 3), 40 * n, np.uint8)).save(base / "images" / folder / f"{name}.jpg")
            values = np.roll(np.resize(np.arange(151, dtype=np.uint8), 12 * 13), n).reshape(12, 13)
            Image.fromarray(values).save(base / "annotations" / folder / f"{name}.png")
    return tmp_path


def test_class_names():
    assert ADE20K.num_classes == len(ADE20K.class_names) == 150
    assert ADE20K.class_names[:3] == ("wall", "building", "sky") and ADE20K.class_names[-1] == "flag"
    assert len(set(map(tuple, ADE20K.palette.tolist()))) == 150


@pytest.mark.parametrize("sub", ["", "ADEChallengeData2016"])
def test_labels_value_by_value(root, sub):
    with pytest.warns(DatasetCountWarning, match="found 2 images, the standard split has 20210"):
        ds = build_dataset("ade20k", root / sub, "train")
    assert len(ds) == 2
    for item in (ds[0], ds[1]):
        raw = np.asarray(Image.open(item["meta"]["label_path"])).astype(np.int64)
        assert set(raw.ravel().tolist()) == set(range(151))
        np.testing.assert_array_equal(item["label"], np.where(raw == 0, 255, raw - 1))


def test_val_split(root):
    with pytest.warns(DatasetCountWarning, match="found 1 images, the standard split has 2000"):
        ds = build_dataset("ade20k", root, "val")
    assert ds[0]["meta"]["image_path"].endswith("validation/ADE_val_00000001.jpg")
