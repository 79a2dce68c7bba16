"""`python -m csfr.evaluate --format cityscapes` end to end on a tiny Cityscapes tree: the test-server
PNGs hold official label ids of the model's predictions, named after the images; any other dataset
is refused before any work."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_cityscapes import OFFICIAL

from csfr import configs
from csfr.data.transforms import normalize
from csfr.engine import checkpoint
from csfr.engine.builders import build_model
from csfr.engine.trainer import Trainer
from csfr.evaluate import main as evaluate_main

pytestmark = pytest.mark.filterwarnings("ignore::csfr.data.DatasetCountWarning")
SIZE = (24, 40)
NAMES = {"train": ["aachen/aachen_000000_000019", "bremen/bremen_000000_000019"],
         "val": ["lindau/lindau_000000_000019"],
         "test": ["berlin/berlin_000000_000019", "bonn/bonn_000003_000019"]}
TINY_CITYSCAPES = ["model.name=csfr_r50_d8", "model.options.width=8", "model.options.head_channels=16",
                   "model.options.csfr_dim=16", "model.options.deep_stem=false", "model.options.multi_grid=null",
                   "data.base_size=[40,24]", "data.crop_size=[16,16]", "data.workers=0", "train.batch_size=2",
                   "train.iters=1", "train.ckpt_interval=1", "train.val_interval=0", "train.device=cpu",
                   "eval.mode=whole", "eval.save_predictions=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Cityscapes tree with 24x40 images (labels from the official id table) and a checkpoint
    trained on it for one iteration."""
    root = tmp_path_factory.mktemp("cityscapes")
    rng = np.random.default_rng(0)
    ids = np.array([i for i, _ in OFFICIAL], np.uint8)
    for split, names in NAMES.items():
        for name in names:
            image = root / "leftImg8bit" / split / f"{name}_leftImg8bit.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(image)
            if split != "test":
                label = root / "gtFine" / split / f"{name}_gtFine_labelIds.png"
                label.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.choice(ids, SIZE)).save(label)
    work = tmp_path_factory.mktemp("run")
    Trainer(configs.resolve("cityscapes", [*TINY_CITYSCAPES, f"data.root={root}"]), work, progress=False).run()
    return root, work / "checkpoints" / "iter_000001.pt"


def test_format_cityscapes_writes_label_ids_of_the_predictions(trained, tmp_path):
    root, ckpt = trained
    out = tmp_path / "submit"
    assert evaluate_main(["--checkpoint", str(ckpt), "--split", "test", "--out", str(out),
                          "--format", "cityscapes", "--workers", "0"]) == 0
    state = checkpoint.load(ckpt)
    model = build_model(state["config"], 19).eval()
    model.load_state_dict(state["model"])
    label_id = {train_id: raw for raw, train_id in OFFICIAL if train_id != 255}
    written = sorted(p.name for p in (out / "cityscapes").iterdir())
    assert written == ["berlin_000000_000019_leftImg8bit.png", "bonn_000003_000019_leftImg8bit.png"]
    for name in NAMES["test"]:
        image = np.asarray(Image.open(root / "leftImg8bit" / "test" / f"{name}_leftImg8bit.png"))
        with torch.no_grad():
            train_ids = model(torch.from_numpy(normalize(image))[None])[0].argmax(0).numpy()
        png = Image.open(out / "cityscapes" / f"{name.split('/')[1]}_leftImg8bit.png")
        assert png.mode in ("L", "P") and png.size == (SIZE[1], SIZE[0])
        np.testing.assert_array_equal(np.asarray(png), np.vectorize(label_id.get)(train_ids))


@pytest.mark.parametrize("dataset", ["ade20k", "synthetic"])
def test_format_cityscapes_is_refused_for_another_dataset_before_any_work(trained, tmp_path, dataset):
    _, ckpt = trained
    out = tmp_path / "submit"
    with pytest.raises(ValueError, match=f"--format cityscapes .* data.dataset is '{dataset}'; use --format color"):
        evaluate_main(["--checkpoint", str(ckpt), "--set", f"data.dataset={dataset}", "--out", str(out),
                       "--format", "cityscapes"])
    assert not out.exists()
