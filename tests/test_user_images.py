"""A user's images and flags (docs/reliability.md): 16-bit PNGs scaled rather than clipped, EXIF
orientation applied, every file of a folder checked before any work, test scales and ONNX opsets
in range."""

import sys

import numpy as np
import pytest
from PIL import Image
from runs import checkpoint_of

import csfr
from csfr import evaluate, export, predict
from csfr.data.base import read_image


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    checkpoint_of(path, "eval.mode=whole", "data.val_options.length=2")
    return path


def test_16_bit_grey_is_scaled_to_8_bits_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (4, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")  # a 16-bit grey PNG
    image = read_image(tmp_path / "ramp.png")
    assert image.shape == (4, 256, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], np.round(ramp / 257).astype(np.uint8))
    assert np.mean(image == 255) < 0.01  # Pillow's own conversion made 99.6 % of it white
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match="float.tiff: floating-point images .*not supported"):
        read_image(tmp_path / "float.tiff")


def test_exif_orientation_is_applied_to_a_users_image(tmp_path, ckpt):
    pixels = np.zeros((40, 48, 3), np.uint8)
    pixels[:, :24] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "phone.png", exif=exif)
    assert read_image(tmp_path / "phone.png").shape == (40, 48, 3)  # a dataset's: as stored
    shown = read_image(tmp_path / "phone.png", orient=True)
    assert shown.shape == (48, 40, 3) and shown[:24].max() == 255 and shown[24:].max() == 0
    predictor = csfr.load(ckpt, device="cpu")
    assert predictor.predict(tmp_path / "phone.png").shape == (48, 40)
    with Image.open(tmp_path / "phone.png") as opened:
        assert predictor.predict(opened).shape == (48, 40)


def test_predict_checks_every_file_of_a_folder_before_any_work(tmp_path, ckpt, monkeypatch, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (40, 40)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG not really")
    monkeypatch.setattr(sys, "argv", ["csfr.predict", str(folder), "--checkpoint", str(ckpt),
                                      "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        predict.entry()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "b.png is not an image Pillow can read" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--scales", "1e6"], r"eval.scales must be a non-empty list of numbers in \[0.125, 4.0\], got \[1000000.0\]"),
    (["--scales", "0"], r"eval.scales must be a non-empty list of numbers in \[0.125, 4.0\], got \[0.0\]"),
])
def test_evaluate_refuses_test_scales_out_of_range(ckpt, flags, message, monkeypatch):
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    with pytest.raises(ValueError, match=message):
        evaluate.main(["--checkpoint", str(ckpt), *flags])
    with pytest.raises(ValueError, match=r"scales must be numbers in \[0.125, 4.0\]"):
        csfr.load(ckpt, device="cpu", scales=[float(flags[1])])


@pytest.mark.parametrize("opset", [1, 17, 99])
def test_export_refuses_an_opset_it_would_not_write(ckpt, tmp_path, opset, monkeypatch):
    monkeypatch.setattr(export, "export_program", lambda *a: pytest.fail("exported"))
    with pytest.raises(ValueError, match=f"--opset {opset} is not one the exporter writes: 18..2"):
        export.main(["--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                     "--opset", str(opset)])
    assert not (tmp_path / "m.onnx").exists()
