"""Pictures of predictions: label PNGs, overlays, error maps and panels with a legend, for every dataset."""

import numpy as np
import pytest
from PIL import Image

from csfr.data import DATASETS, SyntheticScenes
from csfr.data.base import FileDataset
from csfr.engine import panels
from csfr.engine.evaluator import PredictionWriter

PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], np.uint8)
NAMES = ("red", "green", "blue", "yellow")


def colours_in(image):
    return {tuple(c) for c in np.asarray(image.convert("RGB")).reshape(-1, 3)}


def count(image, colour):
    return int((np.asarray(image.convert("RGB")) == colour).all(-1).sum())


def test_label_png_holds_the_ids_and_shows_the_palette():
    label = np.array([[0, 1], [2, 3]])
    image = panels.label_png(label, PALETTE)
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), label)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), PALETTE[label])


def test_error_map_marks_wrong_pixels_red_and_ignored_grey():
    image = np.full((2, 3, 3), 100, np.uint8)
    truth = np.array([[0, 1, 255], [2, 2, 255]])
    pred = np.array([[0, 2, 1], [2, 0, 3]])
    errors = panels.error_map(image, pred, truth)
    np.testing.assert_array_equal(errors[0, 1], panels.WRONG_COLOUR)
    np.testing.assert_array_equal(errors[1, 1], panels.WRONG_COLOUR)
    np.testing.assert_array_equal(errors[:, 2], [panels.IGNORED_IN_ERRORS] * 2)  # wrong but ignored: grey
    np.testing.assert_array_equal(errors[0, 0], [95, 95, 95])  # correct: the image, dimmed greyscale


def test_overlay_blends_the_colour_and_outlines_the_classes():
    image = np.full((3, 4, 3), 100, np.uint8)
    label = np.array([[0, 0, 1, 1]] * 3)
    out = panels.overlay(image, label, PALETTE, alpha=0.6)
    np.testing.assert_array_equal(out[0, 0], np.round(0.4 * 100 + 0.6 * PALETTE[0].astype(float)))
    np.testing.assert_array_equal(out[:, 1], np.full((3, 3), 255))  # the border between class 0 and 1
    np.testing.assert_array_equal(out[0, 3], np.round(0.4 * 100 + 0.6 * PALETTE[1].astype(float)))


def test_panel_shows_truth_prediction_errors_and_a_legend_of_the_classes_present():
    image = np.full((8, 8, 3), 90, np.uint8)
    truth = np.zeros((8, 8), np.int64)
    truth[:, 4:] = 1
    truth[0, 0] = 255
    pred = truth.copy()
    pred[0, 0] = 3  # on an ignored pixel: not an error
    pred[7, 7] = 2  # wrong
    with_truth = panels.panel(image, pred, PALETTE, NAMES, truth)
    without = panels.panel(image, pred, PALETTE, NAMES)
    assert with_truth.width > 1.9 * without.width
    scale = panels.TILE_MIN // 8  # 8x8 tiles are enlarged to 256 px
    all_right = panels.panel(image, truth, PALETTE, NAMES, truth)
    wrong_area = count(with_truth, panels.WRONG_COLOUR) - count(all_right, panels.WRONG_COLOUR)
    assert wrong_area == scale ** 2  # exactly the one wrong pixel (the rest is the legend's swatch)
    assert count(without, panels.WRONG_COLOUR) == 0
    for k in range(4):  # present in the prediction: in the tiles and the legend
        assert tuple(PALETTE[k]) in colours_in(with_truth), NAMES[k]
    present_only_in_pred = panels.panel(image, np.zeros((8, 8), np.int64), PALETTE, NAMES)
    assert tuple(PALETTE[0]) in colours_in(present_only_in_pred)
    assert not {tuple(PALETTE[k]) for k in (1, 2, 3)} & colours_in(present_only_in_pred)  # absent: no legend entry


def test_panel_of_a_test_split_without_labels_has_no_truth_tile():
    image = np.zeros((8, 8, 3), np.uint8)
    pred = np.zeros((8, 8), np.int64)
    unlabeled = panels.panel(image, pred, PALETTE, NAMES, np.full((8, 8), 255))
    assert unlabeled.size == panels.panel(image, pred, PALETTE, NAMES).size


def test_wide_images_are_laid_out_two_by_two_and_kept_small():
    image = np.zeros((512, 1024, 3), np.uint8)
    label = np.zeros((512, 1024), np.int64)
    out = panels.panel(image, label, PALETTE, NAMES, label)
    assert out.width <= 2 * panels.TILE_MAX + 20 and out.height > out.width / 2


def _dataset_classes(name):
    cls = DATASETS[name]
    if issubclass(cls, FileDataset):
        return cls.class_names, cls.palette
    dataset = SyntheticScenes("val", num_classes=7, length=1)
    return dataset.class_names, dataset.palette


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_writer_draws_panels_with_each_datasets_names_and_colours(name, tmp_path):
    names, palette = _dataset_classes(name)
    k = len(names)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, k, (24, 32))
    truth[:3] = 255
    pred = np.where(rng.random((24, 32)) < 0.8, truth % k, rng.integers(0, k, (24, 32)))
    writer = PredictionWriter(tmp_path, palette, class_names=names)
    writer(pred, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), {"image_path": "/x/img_001.jpg"}, truth)
    panel = Image.open(tmp_path / "panel" / "img_001.png")
    present = set(np.unique(pred)) | set(np.unique(truth[truth != 255]))
    assert {tuple(palette[c]) for c in present} <= colours_in(panel)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "pred" / "img_001.png")), pred)
    assert Image.open(tmp_path / "overlay" / "img_001.png").size == (32, 24)
