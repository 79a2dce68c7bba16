"""The frozen-feature proxy (study/proxy.py) and its statistics (study/stats.py)."""

import json
import math

import pytest
import torch

from csfr import configs, models
from study import proxy, stats

SMALL = ["model.options.width=8", "model.options.head_channels=16", "model.options.csfr_dim=16",
         "data.options.size=64", "data.options.length=4", "data.val_options.length=2", "train.iters=3",
         "train.batch_size=2"]


def test_paired_interval_and_tests():
    p = stats.paired({0: 3.0, 1: 5.0, 2: 4.0, 3: 8.0, 4: 5.0, 9: 1.0}, {0: 1.0, 1: 2.0, 2: 2.0, 3: 3.0, 4: 1.0})
    diffs = [2.0, 3.0, 2.0, 5.0, 4.0]  # seed 9 has no reference: not paired
    sd = math.sqrt(sum((d - 3.2) ** 2 for d in diffs) / 4)
    assert (p.n, p.mean) == (5, pytest.approx(3.2))
    assert p.half == pytest.approx(2.776445 * sd / math.sqrt(5), rel=1e-5)  # t(0.975, 4)
    assert p.p_wilcoxon == pytest.approx(2 / 32)  # exact: all five of one sign, two-sided
    assert p.p_t < 0.01 and p.low > 0
    same = stats.paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert (same.mean, same.p_t, same.p_wilcoxon) == (0.0, 1.0, 1.0)
    assert math.isnan(stats.paired({0: 1.0}, {0: 0.0}).half)


def test_holm():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = stats.holm([0.2, math.nan, 0.01])
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


@pytest.fixture
def backbone(tmp_path):
    """A csfr.train-style checkpoint of an untrained narrow FCN (the proxy reads its backbone)."""
    config = configs.resolve("proxy_pretrain", SMALL)
    torch.manual_seed(0)
    model = models.build(config["model"]["name"], 20, **config["model"]["options"])
    path = tmp_path / "pretrain.pt"
    torch.save({"model": model.state_dict(), "config": config, "classes": {"names": [str(i) for i in range(20)]}},
               path)
    return path, model.backbone.eval()


def test_cache_holds_the_frozen_backbones_features_of_each_image_and_its_mirror(tmp_path, backbone):
    path, reference = backbone
    config = configs.resolve("proxy", SMALL)
    cache = proxy.cached_features(path, config, tmp_path)
    assert cache["train"]["c4"].shape == (8, 256, 8, 8) and cache["train"]["c4"].dtype == torch.float16
    assert cache["val"]["labels"].shape == (2, 64, 64) and cache["val"]["labels"].dtype == torch.uint8
    train = proxy.build_dataset("synthetic", None, "train", transform=proxy.eval_transform(config),
                                **config["data"]["options"])
    image = torch.from_numpy(train[1]["image"])[None]
    with torch.no_grad():
        torch.testing.assert_close(cache["train"]["c4"][2].float(), reference(image)[1][0], atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(cache["train"]["c4"][3].float(), reference(image.flip(-1))[1][0],
                                   atol=2e-2, rtol=1e-2)
    assert torch.equal(cache["train"]["labels"][3], torch.from_numpy(train[1]["label"]).flip(-1).to(torch.uint8))
    assert proxy.cached_features(path, config, tmp_path)["class_names"] == cache["class_names"]  # read back


def test_arms_share_the_baselines_initial_weights():
    config = configs.resolve("proxy", SMALL)
    base = proxy.build_arm(proxy.ARMS["baseline"], config, 20, seed=3).state_dict()
    csfr = proxy.build_arm(proxy.ARMS["csfr"], config, 20, seed=3).state_dict()
    shared = [k for k in base if k.startswith(("head.", "classifier."))]
    assert shared and all(torch.equal(base[k], csfr[k.replace("head.", "head.head.", 1)]
                                      if k.startswith("head.") else csfr[k]) for k in shared)
    other = proxy.build_arm(proxy.ARMS["baseline"], config, 20, seed=4).state_dict()
    assert not torch.equal(base["classifier.1.weight"], other["classifier.1.weight"])


def test_runs_are_deterministic_and_the_stream_alone_changes_the_aa_arm(tmp_path, backbone):
    config = configs.resolve("proxy", SMALL)
    cache = proxy.cached_features(backbone[0], config, tmp_path)
    first = proxy.train_run(proxy.ARMS["baseline"], 0, config, cache)
    again = proxy.train_run(proxy.ARMS["baseline"], 0, config, cache)
    assert first["IoU"] == again["IoU"]
    aa = proxy.train_run(proxy.ARMS["aa"], 0, {**config, "train": {**config["train"], "iters": 20}}, cache)
    base = proxy.train_run(proxy.ARMS["baseline"], 0, {**config, "train": {**config["train"], "iters": 20}}, cache)
    assert aa["IoU"] != base["IoU"]


def test_run_resumes_and_table_compares_every_arm(tmp_path, backbone, monkeypatch):
    args = ["--backbone", str(backbone[0]), "--work-dir", str(tmp_path / "w"), "--seeds", "0-1",
            *[a for s in SMALL for a in ("--set", s)]]
    proxy.main(["run", *args, "--arms", "baseline", "aa", "csfr", "cac_input", "balanced"])
    stored = sorted((tmp_path / "w" / "runs").glob("*.json"))
    assert len(stored) == 10 and {json.loads(p.read_text())["arm"] for p in stored} == \
        {"baseline", "aa", "csfr", "cac_input", "balanced"}
    monkeypatch.setattr(proxy, "train_run", lambda *a: pytest.fail("a stored run was trained again"))
    proxy.main(["run", *args, "--arms", "baseline", "csfr"])
    out = tmp_path / "R.md"
    proxy.main(["table", *args, "--out", str(out), "--title", "T"])
    text = out.read_text()
    assert text.startswith("# Training results") and "## T" in text
    assert "| aa − baseline | 2 |" in text and "| csfr − baseline | 2 |" in text
    assert "first look (< 4 seeds)" in text and "aam" not in text.split("| contrast")[1]


def test_missing_backbone_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="backbone checkpoint .*nowhere.pt does not exist"):
        proxy.main(["run", "--backbone", str(tmp_path / "nowhere.pt")])


def test_end_to_end_runs_train_the_whole_network_from_the_pretrained_backbone(tmp_path, backbone):
    args = ["run", "--end-to-end", "--backbone", str(backbone[0]), "--work-dir", str(tmp_path / "w"),
            "--seeds", "0", "--arms", "baseline", "csfr",
            *[a for s in [*SMALL, "data.workers=0", "train.ckpt_interval=3"] for a in ("--set", s)]]
    proxy.main(args)
    stored = sorted((tmp_path / "w" / "end_to_end").glob("*.json"))
    assert [json.loads(p.read_text())["arm"] for p in stored] == ["baseline", "csfr"]
    run = next(p for p in (tmp_path / "w" / "end_to_end").iterdir() if p.is_dir() and p.name.startswith("csfr"))
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["pretrained"].startswith(str(tmp_path / "w" / "backbone_"))
    assert config["model"]["options"]["aux_weight"] == 0.4
    with pytest.raises(ValueError, match="arm cac_input has no end-to-end form"):
        proxy.end_to_end_run(proxy.ARMS["cac_input"], 0, configs.resolve("proxy", SMALL), backbone[0], tmp_path)
