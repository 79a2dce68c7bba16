"""Cityscapes on a tiny fixture in the official layout: counts, the id -> trainId table value by value,
the converter (and its idempotency), the test split without labels."""

import numpy as np
import pytest
from PIL import Image

from csfr.data import Cityscapes, DatasetCountWarning, build_dataset
from csfr.data.prepare import main as prepare_main

# (labelId, trainId) from cityscapesscripts/helpers/labels.py; 255 in the PNG is the license plate (id -1).
OFFICIAL = [(0, 255), (1, 255), (2, 255), (3, 255), (4, 255), (5, 255), (6, 255), (7, 0), (8, 1), (9, 255),
            (10, 255), (11, 2), (12, 3), (13, 4), (14, 255), (15, 255), (16, 255), (17, 5), (18, 255),
            (19, 6), (20, 7), (21, 8), (22, 9), (23, 10), (24, 11), (25, 12), (26, 13), (27, 14), (28, 15),
            (29, 255), (30, 255), (31, 16), (32, 17), (33, 18), (255, 255)]
FILES = {"train": ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019", "bremen/bremen_000000_000019"],
         "val": ["lindau/lindau_000000_000019"], "test": ["berlin/berlin_000000_000019"]}


def _raw_label(seed):
    ids = np.array([i for i, _ in OFFICIAL], np.uint8)
    return np.random.default_rng(seed).permutation(np.resize(ids, 6 * 8)).reshape(6, 8)


@pytest.fixture
def root(tmp_path):
    for split, names in FILES.items():
        for n, name in enumerate(names):
            image = tmp_path / "leftImg8bit" / split / f"{name}_leftImg8bit.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((6, 8, 3), n * 10, np.uint8)).save(image)
            if split != "test":
                label = tmp_path / "gtFine" / split / f"{name}_gtFine_labelIds.png"
                label.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_raw_label(n)).save(label)
                Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(str(label).replace("labelIds", "color"))
    return tmp_path


def test_class_names_and_palette():
    assert Cityscapes.num_classes == len(Cityscapes.class_names) == 19
    assert Cityscapes.palette.shape == (19, 3) and Cityscapes.palette.dtype == np.uint8
    assert Cityscapes.palette[0].tolist() == [128, 64, 128] and Cityscapes.class_names[-1] == "bicycle"


def test_raw_label_ids_mapped_value_by_value(root):
    with pytest.warns(DatasetCountWarning, match="found 3 images, the standard split has 2975"):
        ds = build_dataset("cityscapes", root, "train")
    assert len(ds) == 3
    table = dict(OFFICIAL)
    for i in range(3):
        item = ds[i]
        raw = np.asarray(Image.open(item["meta"]["label_path"]))
        assert item["label"].dtype == np.int64 and item["image"].shape == (6, 8, 3)
        assert item["label"].tolist() == [[table[v] for v in row] for row in raw.tolist()]
        assert item["meta"]["index"] == i and item["meta"]["image_path"].endswith("_leftImg8bit.png")


def test_converter_writes_train_ids_once_and_dataset_prefers_them(root, capsys):
    with pytest.warns(DatasetCountWarning):
        before = [build_dataset("cityscapes", root, "train")[i]["label"] for i in range(3)]
    prepare_main(["cityscapes", "--root", str(root), "--workers", "2"])
    assert "wrote 4 files, skipped 0" in capsys.readouterr().out
    written = sorted(root.rglob("*_gtFine_labelTrainIds.png"))
    assert len(written) == 4 and not list(root.rglob("*.tmp"))
    prepare_main(["cityscapes", "--root", str(root), "--workers", "1"])
    assert "wrote 0 files, skipped 4" in capsys.readouterr().out
    with pytest.warns(DatasetCountWarning):
        ds = build_dataset("cityscapes", root, "train")
    for i in range(3):
        assert ds[i]["meta"]["label_path"].endswith("_gtFine_labelTrainIds.png")
        np.testing.assert_array_equal(ds[i]["label"], before[i])


def test_test_split_has_ignore_labels(root):
    with pytest.warns(DatasetCountWarning, match="found 1 images, the standard split has 1525"):
        ds = build_dataset("cityscapes", root, "test")
    item = ds[0]
    assert item["meta"]["label_path"] is None
    assert item["label"].shape == (6, 8) and (item["label"] == 255).all()


@pytest.mark.parametrize("value", [34, 254])
def test_label_id_outside_the_official_table_is_named(root, value):
    path = root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    raw = _raw_label(0)
    raw[2, 3] = value
    Image.fromarray(raw).save(path)
    with pytest.warns(DatasetCountWarning):
        ds = build_dataset("cityscapes", root, "val")
    with pytest.raises(ValueError, match=rf"label file {path}: value {value} is not a known label id"):
        ds[0]
    with pytest.raises(ValueError, match=rf"{path}: value {value} "):
        prepare_main(["cityscapes", "--root", str(root), "--workers", "1"])
