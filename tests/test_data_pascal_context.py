"""PASCAL Context: the RLE decoder, the trainval_merged.json converter (59 standard categories by name,
others -> background, paint order), and the 59 / 60 class datasets on its output."""

import json

import numpy as np
import pytest
from PIL import Image

from csfr.data import DatasetCountWarning, PascalContext59, PascalContext60, build_dataset
from csfr.data.masks import rle_decode, rle_string_counts, segmentation_mask
from csfr.data.prepare import main as prepare_main

# Detail / labels.txt ids of the 59 standard classes, in the (alphabetical) order of the class list.
STANDARD_IDS = [2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113,
                115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326,
                347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458]
OTHERS = {1: "accordion", 3: "air conditioner", 4: "antenna", 100: "crane"}
CATEGORIES = {**dict(zip(STANDARD_IDS, PascalContext59.class_names)), **OTHERS}
H, W = 10, 12
IMAGES = {"train": ["2008_000002", "2008_000003", "2009_000001"], "val": ["2010_000001", "2010_000002"]}
SKY_RECT = (3, 2, 6, 4)  # polygon annotation x0, y0, x1, y1 (inclusive) painted last


def _runs(mask):
    """Run lengths of a bool mask, column-major, starting with a background run."""
    flat = mask.T.ravel().astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    return ([0] if flat[0] else []) + np.diff(bounds).tolist()


def _rle(mask):
    """pycocotools-style compressed RLE string of a bool mask (rleToString)."""
    counts = _runs(mask)
    out = []
    for i, x in enumerate(counts):
        x = x - counts[i - 2] if i > 2 else x
        more = True
        while more:
            c, x = x & 0x1F, x >> 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def _targets(n):
    """Raw category id per pixel (0 = not annotated) for image n, covering every category."""
    ids = np.array([0, *CATEGORIES])
    return np.random.default_rng(n).permutation(np.resize(np.roll(ids, n), H * W)).reshape(H, W)


def _expected(n):
    value = {cid: (PascalContext59.class_names.index(name) + 1 if cid in STANDARD_IDS else 0)
             for cid, name in CATEGORIES.items()}
    out = np.vectorize(lambda c: value.get(c, 0))(_targets(n))
    x0, y0, x1, y1 = SKY_RECT
    out[y0:y1 + 1, x0:x1 + 1] = PascalContext59.class_names.index("sky") + 1
    return out


@pytest.fixture
def root(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    (voc / "JPEGImages").mkdir(parents=True)
    images, annos = [], []
    for n, name in enumerate(IMAGES["train"] + IMAGES["val"]):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        image_id = int(name.replace("_", ""))
        images.append({"image_id": image_id, "file_name": f"{name}.jpg", "height": H, "width": W,
                       "phase": "train" if name in IMAGES["train"] else "val"})
        target = _targets(n)
        for k, cid in enumerate(CATEGORIES):
            mask = target == cid
            # alternate compressed-string and plain-list RLE
            counts = _rle(mask) if k % 2 else _runs(mask)
            annos.append({"id": len(annos), "image_id": image_id, "category_id": cid,
                          "segmentation": {"size": [H, W], "counts": counts}})
        x0, y0, x1, y1 = SKY_RECT
        annos.append({"id": len(annos), "image_id": image_id, "category_id": 360,
                      "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    categories = [{"category_id": cid, "name": name} for cid, name in CATEGORIES.items()]
    (tmp_path / "trainval_merged.json").write_text(json.dumps(
        {"images": images, "annos_segmentation": annos, "categories": categories}))
    return tmp_path


def test_rle_decoder_hand_examples_and_round_trip():
    assert rle_string_counts("121") == [1, 2, 1]
    assert rle_string_counts("351M") == [3, 5, 1, 2]  # 4th run stored as a negative difference (2 - 5)
    assert rle_string_counts("T3") == [100]
    np.testing.assert_array_equal(rle_decode([1, 2, 1], 2, 2), [[False, True], [True, False]])
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (31, 17), (64, 80)]:
        mask = rng.random(shape) < rng.random()
        decoded = segmentation_mask({"size": list(shape), "counts": _rle(mask)}, *shape)
        np.testing.assert_array_equal(decoded, mask)


def test_segmentation_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="RLE size"):
        segmentation_mask({"size": [4, 4], "counts": "0"}, 5, 5)
    with pytest.raises(ValueError, match="runs sum to"):
        segmentation_mask({"size": [2, 2], "counts": [1, 1]}, 2, 2)


def test_class_names():
    assert PascalContext59.num_classes == len(PascalContext59.class_names) == 59
    assert PascalContext60.num_classes == len(PascalContext60.class_names) == 60
    assert PascalContext60.class_names[0] == "background" and PascalContext60.class_names[1:] == \
        PascalContext59.class_names


@pytest.mark.parametrize("sub", ["", "VOCdevkit", "VOCdevkit/VOC2010"])
def test_converter_and_datasets(root, sub, capsys):
    prepare_main(["pascal_context", "--root", str(root / sub), "--workers", "2",
                  "--json", str(root / "trainval_merged.json")])
    prepare_main(["pascal_context", "--root", str(root / sub), "--workers", "1",
                  "--json", str(root / "trainval_merged.json")])
    out = capsys.readouterr().out
    assert "wrote 5 files, skipped 0" in out and "wrote 0 files, skipped 5" in out
    voc = root / "VOCdevkit" / "VOC2010"
    for split, names in IMAGES.items():
        assert (voc / "ImageSets" / "SegmentationContext" / f"{split}.txt").read_text().split() == names
    expected = {name: _expected(n) for n, name in enumerate(IMAGES["train"] + IMAGES["val"])}
    assert set(np.concatenate([e.ravel() for e in expected.values()]).tolist()) == set(range(60))
    for split, standard in (("train", 4996), ("val", 5104)):
        with pytest.warns(DatasetCountWarning, match=f"found {len(IMAGES[split])} images, the standard split "
                                                     f"has {standard}"):
            ds59 = build_dataset("pascal_context59", root / sub, split)
        with pytest.warns(DatasetCountWarning):
            ds60 = build_dataset("pascal_context60", root / sub, split)
        for i, name in enumerate(IMAGES[split]):
            raw = expected[name]
            assert ds60[i]["meta"]["label_path"].endswith(f"SegmentationClassContext/{name}.png")
            np.testing.assert_array_equal(ds60[i]["label"], raw)
            np.testing.assert_array_equal(ds59[i]["label"], np.where(raw == 0, 255, raw - 1))


def test_converter_finds_json_in_root(root):
    prepare_main(["pascal_context", "--root", str(root), "--workers", "1"])
    assert len(list((root / "VOCdevkit/VOC2010/SegmentationClassContext").glob("*.png"))) == 5


def _edit_json(root, edit):
    detail = json.loads((root / "trainval_merged.json").read_text())
    edit(detail)
    (root / "trainval_merged.json").write_text(json.dumps(detail))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["categories"].pop(next(i for i, c in enumerate(d["categories"]) if c["name"] == "tvmonitor")),
     "category 427 is missing, expected 'tvmonitor'"),
    (lambda d: d["categories"][0].update(name="monitor"), "category 2 is 'monitor', expected 'aeroplane'"),
    (lambda d: d["categories"].append({"category_id": 460, "name": "x"}), r"category_id 460 \('x'\) is outside 1..459"),
    (lambda d: d["annos_segmentation"][3].update(category_id=5), "annotation 3 of image 2008000002 has category_id 5"),
    (lambda d: d["images"][1].pop("height"), "missing field 'height'"),
])
def test_converter_refuses_a_malformed_json_naming_it(root, edit, message):
    _edit_json(root, edit)
    with pytest.raises(ValueError, match=rf"trainval_merged.json: .*{message}"):
        prepare_main(["pascal_context", "--root", str(root), "--workers", "1"])
    assert not (root / "VOCdevkit/VOC2010/SegmentationClassContext").exists()


def test_converter_names_an_unparsable_json(root):
    (root / "trainval_merged.json").write_text('{"images": [')
    with pytest.raises(ValueError, match=r"trainval_merged.json: Expecting value"):
        prepare_main(["pascal_context", "--root", str(root), "--workers", "1"])
