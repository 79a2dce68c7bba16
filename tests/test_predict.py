"""csfr.load / Predictor.predict and python -m csfr.predict: the evaluation's label maps on one's own images."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from runs import checkpoint_of

import csfr
from csfr.data import SyntheticScenes
from csfr.engine import checkpoint, distributed
from csfr.engine.builders import build_datasets, build_model
from csfr.engine.evaluator import evaluate
from csfr.engine.metrics import confusion_matrix, scores
from csfr.predict import entry, parser

# Every step of the evaluation pipeline at work: resize to eval.base_size (the images are 40x40),
# sliding windows, two scales and flips.
EVAL = ["eval.base_size=[56,56]", "eval.mode=slide", "eval.crop_size=[32,32]", "eval.stride=[24,24]",
        "eval.scales=[0.75,1.0]", "eval.flip=true", "data.val_options.length=2"]
CHEAP = {"scales": [1.0], "flip": False, "mode": "whole"}  # one forward pass per image


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    checkpoint_of(path, *EVAL)
    return path


def test_predict_gives_the_label_maps_that_evaluate_scores(ckpt):
    state = checkpoint.load(ckpt)
    config = state["config"]
    _, dataset = build_datasets(config, train=False)
    model = build_model(config, dataset.num_classes)
    checkpoint.load_weights(model, state["model"], str(ckpt))
    scored = {}
    result = evaluate(model, dataset, distributed.init("cpu"), config["eval"], progress=False,
                      writer=lambda pred, image, meta, truth: scored.__setitem__(meta["index"], pred))
    predictor = csfr.load(ckpt, device="cpu")
    dataset.transform = None  # the raw images, as a user has them
    cm = torch.zeros(dataset.num_classes, dataset.num_classes, dtype=torch.int64)
    for index in range(len(dataset)):
        item = dataset[index]
        labels = predictor.predict(item["image"])
        assert labels.shape == item["label"].shape
        np.testing.assert_array_equal(labels, scored[index])
        cm += confusion_matrix(torch.from_numpy(labels), torch.from_numpy(item["label"]), dataset.num_classes)
    assert len(np.unique(np.stack(list(scored.values())))) > 1  # not a constant map
    assert scores(cm, dataset.class_names)["mIoU"] == result["mIoU"]


def test_every_kind_of_input_gives_the_same_label_map(ckpt, tmp_path):
    predictor = csfr.load(ckpt, device="cpu", **CHEAP)
    image = SyntheticScenes("val", num_classes=4, size=(37, 45)).scene(0)[0]
    Image.fromarray(image).save(tmp_path / "a.png")
    expected = predictor.predict(image)
    assert expected.shape == (37, 45) and expected.dtype == np.int64
    assert len(np.unique(expected)) > 1  # a map that a transposed or flipped input would change
    chw = torch.from_numpy(image).permute(2, 0, 1)
    for same in (predictor.predict(tmp_path / "a.png"), predictor.predict(str(tmp_path / "a.png")),
                 predictor.predict(Image.open(tmp_path / "a.png")), predictor.predict(chw).numpy(),
                 predictor.predict(chw.float() / 255).numpy(), predictor.predict(image[None])[0],
                 predictor.predict(chw[None].repeat(2, 1, 1, 1))[1].numpy(), predictor.predict([image])[0]):
        np.testing.assert_array_equal(same, expected)
    assert predictor.predict(chw).dtype == torch.int64


@pytest.mark.parametrize("bad, message", [
    (np.zeros((8, 8, 3), np.float32), "must be uint8"),
    (np.zeros((8, 8), np.uint8), "HxWx3"),
    (torch.full((3, 8, 8), 200.0), "values in [0, 1]"),
    (torch.zeros(4, 8, 8), "3xHxW"),
    (3, "expected a path"),
])
def test_bad_images_are_refused_naming_the_problem(ckpt, bad, message):
    with pytest.raises((TypeError, ValueError), match=message.replace("[", r"\[").replace("]", r"\]")):
        csfr.load(ckpt, device="cpu", **CHEAP).predict(bad)


def test_a_checkpoint_without_class_metadata_falls_back_to_the_dataset_definition(ckpt, tmp_path):
    state = checkpoint.load(ckpt)
    del state["classes"]
    old = tmp_path / "old.pt"
    checkpoint.save(state, old)
    with pytest.warns(UserWarning, match="holds no class names"):
        predictor = csfr.load(old, device="cpu")
    new = csfr.load(ckpt, device="cpu")
    assert predictor.class_names == new.class_names and predictor.class_names[0].startswith("pair0")
    np.testing.assert_array_equal(predictor.palette, new.palette)


def test_load_overrides_scales_and_flip(ckpt):
    predictor = csfr.load(ckpt, device="cpu", scales=[1.0], flip=False, mode="whole")
    assert predictor.eval_cfg["scales"] == [1.0] and not predictor.eval_cfg["flip"]
    assert predictor.eval_cfg["mode"] == "whole"


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "csfr.predict", *map(str, args)], capture_output=True, text=True,
                          check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_writes_label_maps_overlays_and_panels(ckpt, tmp_path):
    images = tmp_path / "photos"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = {"one": rng.integers(0, 256, (40, 52, 3), dtype=np.uint8),
              "sub/two": rng.integers(0, 256, (44, 36, 3), dtype=np.uint8)}
    for name, array in arrays.items():
        Image.fromarray(array).save(images / f"{name}.png")
    (images / "notes.txt").write_text("not an image")  # not an image suffix: skipped in a folder
    single = tmp_path / "three.jpg"
    Image.fromarray(arrays["one"]).save(single, quality=95)
    out = tmp_path / "out"
    cli("--checkpoint", ckpt, images, single, "--out", out, "--no-progress", "--mode", "whole", "--scales", "1")
    predictor = csfr.load(ckpt, device="cpu", scales=[1.0], mode="whole")
    for name, array in arrays.items():
        saved = Image.open(out / "pred" / f"{name}.png")
        assert saved.mode == "P"
        np.testing.assert_array_equal(np.asarray(saved), predictor.predict(array))
        colours = np.asarray(saved.convert("RGB"))
        np.testing.assert_array_equal(colours, predictor.palette[np.asarray(saved)])
        assert Image.open(out / "overlay" / f"{name}.png").size == saved.size
        assert Image.open(out / "panel" / f"{name}.png").width > 2 * saved.width
    assert (out / "pred" / "three.png").is_file()


def test_cli_scales_and_flip_reach_the_predictor(ckpt, tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    proc = cli("--checkpoint", ckpt, tmp_path / "x.png", "--out", tmp_path / "out", "--scales", "1.0", "--mode",
               "whole", "--no-progress")
    assert "whole inference, scales [1.0] + flip" in proc.stdout  # eval.flip stays on from the config
    expected = csfr.load(ckpt, device="cpu", scales=[1.0], mode="whole").predict(image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "pred" / "x.png")), expected)


def test_cli_bad_input_is_one_line_and_exit_2_before_any_work(ckpt, tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "fake.png").write_text("not a png")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    Image.new("RGB", (40, 40)).save(tmp_path / "ok.png")
    cases = [((tmp_path / "missing.png", "--checkpoint", ckpt), "missing.png does not exist"),
             ((tmp_path / "fake.png", "--checkpoint", ckpt), "fake.png is not an image"),
             ((tmp_path / "empty", "--checkpoint", ckpt), "holds no images"),
             ((tmp_path / "ok.png", "--checkpoint", tmp_path / "foreign.pt"), "not written by csfr.train"),
             ((tmp_path / "ok.png", "--checkpoint", tmp_path / "nope.pt"), "nope.pt does not exist")]
    for args, message in cases:
        out = tmp_path / "out"
        monkeypatch.setattr(sys, "argv", ["csfr.predict", *map(str, args), "--out", str(out)])
        with pytest.raises(SystemExit) as exit_:
            entry()
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(lines) == 1 and message in lines[0], lines
        assert not out.exists()


def test_help_explains_every_flag():
    for action in parser()._actions:
        assert action.help, action.dest
    text = parser().format_help()
    for flag in ("--checkpoint", "--out", "--device", "--scales", "--flip", "--mode", "--no-progress"):
        assert flag in text
