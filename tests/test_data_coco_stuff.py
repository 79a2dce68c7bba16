"""COCO-Stuff 164k (raw PNG ids and converted train ids) and 10k (.mat -> PNG converter, image lists)."""

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from csfr.data import COCOStuff10k, COCOStuff164k, DatasetCountWarning, build_dataset
from csfr.data.prepare import main as prepare_main

UNUSED = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
USED = [r for r in range(182) if r not in UNUSED]


def _expected(raw0):
    """0-based raw id (255 = unlabelled) -> train id, counting the unused ids below it."""
    return 255 if raw0 == 255 else raw0 - sum(u < raw0 for u in UNUSED)


def _values(seed, shape=(14, 13)):
    return np.random.default_rng(seed).permutation(np.resize(np.array(USED + [255]), shape[0] * shape[1])
                                                   ).reshape(shape)


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def root164k(tmp_path):
    for split, count in (("train", 2), ("val", 1)):
        for n in range(count):
            name = f"{n + 1:012d}"
            _save(tmp_path / "images" / f"{split}2017" / f"{name}.jpg", np.zeros((14, 13, 3), np.uint8))
            _save(tmp_path / "annotations" / f"{split}2017" / f"{name}.png", _values(n).astype(np.uint8))
    return tmp_path


@pytest.fixture
def root10k(tmp_path):
    (tmp_path / "imageLists").mkdir()
    (tmp_path / "annotations").mkdir()
    lists = {"train": ["COCO_train2014_000000000077", "COCO_train2014_000000000078"],
             "test": ["COCO_train2014_000000000079"]}
    for split, names in lists.items():
        (tmp_path / "imageLists" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        for n, name in enumerate(names):
            _save(tmp_path / "images" / f"{name}.jpg", np.zeros((14, 13, 3), np.uint8))
            raw = _values(n)
            savemat(tmp_path / "annotations" / f"{name}.mat",
                    {"S": np.where(raw == 255, 0, raw + 1).astype(np.uint16)})
    return tmp_path


def test_class_names():
    for cls in (COCOStuff10k, COCOStuff164k):
        assert cls.num_classes == len(cls.class_names) == 171
    names = COCOStuff164k.class_names
    assert names[_expected(0)] == "person" and names[_expected(12)] == "stop sign"
    assert names[_expected(91)] == "banner" and names[_expected(181)] == "wood" and names[79] == "toothbrush"


def test_164k_raw_ids_value_by_value(root164k):
    with pytest.warns(DatasetCountWarning, match="found 2 images, the standard split has 118287"):
        ds = build_dataset("coco_stuff164k", root164k, "train")
    for i in range(2):
        item = ds[i]
        raw = np.asarray(Image.open(item["meta"]["label_path"]))
        assert set(raw.ravel().tolist()) == set(USED) | {255}
        assert item["label"].tolist() == [[_expected(v) for v in row] for row in raw.tolist()]
    assert sorted(set(np.concatenate([ds[i]["label"].ravel() for i in range(2)]).tolist())) == [*range(171), 255]


def test_164k_converter(root164k, capsys):
    with pytest.warns(DatasetCountWarning):
        before = build_dataset("coco_stuff164k", root164k, "val")[0]["label"]
    prepare_main(["coco_stuff164k", "--root", str(root164k), "--workers", "1"])
    prepare_main(["coco_stuff164k", "--root", str(root164k), "--workers", "2"])
    out = capsys.readouterr().out
    assert "wrote 3 files, skipped 0" in out and "wrote 0 files, skipped 3" in out
    with pytest.warns(DatasetCountWarning, match="found 1 images, the standard split has 5000"):
        item = build_dataset("coco_stuff164k", root164k, "val")[0]
    assert item["meta"]["label_path"].endswith("_labelTrainIds.png")
    np.testing.assert_array_equal(item["label"], before)


def test_10k_needs_conversion_then_reads_lists(root10k, capsys):
    with pytest.raises(FileNotFoundError, match="python -m csfr.data.prepare coco_stuff10k"):
        build_dataset("coco_stuff10k", root10k, "train")
    prepare_main(["coco_stuff10k", "--root", str(root10k), "--workers", "2"])
    prepare_main(["coco_stuff10k", "--root", str(root10k), "--workers", "2"])
    out = capsys.readouterr().out
    assert "wrote 3 files, skipped 0" in out and "wrote 0 files, skipped 3" in out
    with pytest.warns(DatasetCountWarning, match="found 2 images, the standard split has 9000"):
        train = build_dataset("coco_stuff10k", root10k, "train")
    with pytest.warns(DatasetCountWarning, match="found 1 images, the standard split has 1000"):
        test = build_dataset("coco_stuff10k", root10k, "test")
    for ds, seeds in ((train, (0, 1)), (test, (0,))):
        for i, seed in enumerate(seeds):
            expected = [[_expected(v) for v in row] for row in _values(seed).tolist()]
            assert ds[i]["label"].tolist() == expected
    assert test[0]["meta"]["image_path"].endswith("COCO_train2014_000000000079.jpg")


def test_10k_converter_rejects_unknown_mat_value(root10k):
    savemat(root10k / "annotations" / "COCO_train2014_000000000077.mat",
            {"S": np.full((14, 13), 12, np.uint16)})
    with pytest.raises(ValueError, match=r"COCO_train2014_000000000077\.mat: value 12 "):
        prepare_main(["coco_stuff10k", "--root", str(root10k), "--workers", "1"])
    assert not (root10k / "annotations" / "COCO_train2014_000000000077_labelTrainIds.png").exists()
    assert not list(root10k.rglob("*.tmp"))


@pytest.mark.parametrize("value", [11, 182])  # 11: "street sign", in the 182-id list but never used
def test_164k_unused_or_unknown_id_is_named(root164k, value):
    path = root164k / "annotations" / "val2017" / f"{1:012d}.png"
    raw = _values(0).astype(np.uint8)
    raw[5, 6] = value
    _save(path, raw)
    with pytest.warns(DatasetCountWarning):
        ds = build_dataset("coco_stuff164k", root164k, "val")
    with pytest.raises(ValueError, match=rf"label file {path}: value {value} is not a known label id"):
        ds[0]


@pytest.mark.parametrize("corrupt", [lambda p: p.write_bytes(b"not a MAT file"), lambda p: savemat(p, {"T": 1})])
def test_10k_converter_names_an_unreadable_mat(root10k, corrupt):
    path = root10k / "annotations" / "COCO_train2014_000000000078.mat"
    corrupt(path)
    with pytest.raises(ValueError, match=rf"cannot read the label map S from {path}"):
        prepare_main(["coco_stuff10k", "--root", str(root10k), "--workers", "1"])
    assert not (root10k / "annotations" / "COCO_train2014_000000000078_labelTrainIds.png").exists()
