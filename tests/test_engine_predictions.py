"""Prediction files: palette label PNGs, overlays and panels, and Cityscapes test-server PNGs of label ids."""

import numpy as np
from PIL import Image

from csfr.data.cityscapes import PALETTE
from csfr.engine.evaluator import PredictionWriter


def test_cityscapes_format_writes_official_label_ids_named_after_the_image(tmp_path):
    writer = PredictionWriter(tmp_path, PALETTE, fmt="cityscapes")
    pred = np.arange(19, dtype=np.uint8).reshape(1, 19)
    writer(pred, np.zeros((1, 19, 3), np.uint8),
           {"image_path": "/data/leftImg8bit/test/berlin/berlin_000123_000019_leftImg8bit.png"})
    out = np.asarray(Image.open(tmp_path / "cityscapes" / "berlin_000123_000019_leftImg8bit.png"))
    # trainId -> labelId, cityscapesscripts' table: road 7, sidewalk 8, building 11, ..., bicycle 33
    assert out.ravel().tolist() == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def test_color_format_writes_label_png_overlay_and_panel(tmp_path):
    palette = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    writer = PredictionWriter(tmp_path, palette, limit=1)
    pred = np.array([[0, 1]], np.uint8)
    image = np.full((1, 2, 3), 100, np.uint8)
    writer(pred, image, {"image_path": None, "index": 7})
    writer(pred, image, {"image_path": None, "index": 8})  # over the limit: not written
    saved = Image.open(tmp_path / "pred" / "000007.png")
    assert np.asarray(saved).tolist() == [[0, 1]]  # class ids
    assert np.asarray(saved.convert("RGB")).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    overlay = np.asarray(Image.open(tmp_path / "overlay" / "000007.png"))
    assert overlay.tolist() == [[[255, 255, 255], [40, 40, 193]]]  # a class border, then 0.4 grey + 0.6 blue
    assert (tmp_path / "panel" / "000007.png").is_file()
    assert not (tmp_path / "pred" / "000008.png").exists()
