"""Presets as plain data and command-line overrides."""

import json

import pytest

from csfr import configs

BENCHMARKS = ("cityscapes", "ade20k", "coco_stuff10k", "coco_stuff164k", "pascal_context59", "pascal_context60")
SYNTHETIC = ("synthetic", "proxy", "proxy_pretrain")  # the demo, and the proxy study's two (docs/study.md)
PRESETS = SYNTHETIC + BENCHMARKS


def test_every_preset_is_listed_and_complete():
    assert sorted(PRESETS) == configs.names()
    base = configs.load("synthetic")
    for name in PRESETS:
        config = configs.load(name)
        assert "_base" not in config
        for section in ("model", "data", "train", "eval"):
            assert set(config[section]) == set(base[section]), (name, section)
        assert config["data"]["dataset"] == ("synthetic" if name in SYNTHETIC else name)
        assert config["notes"], f"{name} must say where its values come from"


def test_paper_protocol_values():
    city = configs.load("cityscapes")
    assert city["data"]["crop_size"] == [768, 768] and city["train"]["batch_size"] == 8
    assert city["model"]["name"] == "csfr_r101_d8" and city["model"]["options"]["multi_grid"] == [1, 2, 4]
    for name in BENCHMARKS:
        config = configs.load(name)
        assert config["train"]["momentum"] == 0.9 and config["train"]["poly_power"] == 0.9
        assert config["train"]["head_lr_mult"] == 10 and config["train"]["sync_bn"]
        assert config["data"]["ratio_range"] == [0.5, 2.0]
        assert config["model"]["options"]["aux_weight"] == 0.4
    assert configs.load("ade20k")["train"]["batch_size"] == 16


def test_overrides_parse_json_values():
    config = configs.resolve("synthetic", ["train.iters=7", "train.amp=bfloat16", "eval.scales=[0.5, 1.0]",
                                           "eval.flip=true", "model.options.width=8", "data.root=/x/y"])
    assert config["train"]["iters"] == 7 and config["train"]["amp"] == "bfloat16"
    assert config["eval"]["scales"] == [0.5, 1.0] and config["eval"]["flip"] is True
    assert config["model"]["options"]["width"] == 8 and config["data"]["root"] == "/x/y"


@pytest.mark.parametrize("assignment, message", [
    ("train.itres=3", "unknown key 'itres' in train; valid keys: accum_steps"),
    ("trian.iters=3", "unknown key 'trian' in the top level"),
    ("train.iters.x=3", "is a value, not a section"),
    ("train.iters", "not of the form"),
])
def test_bad_overrides_are_named(assignment, message):
    with pytest.raises(ValueError, match=message):
        configs.resolve("synthetic", [assignment])


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid presets: ade20k, cityscapes"):
        configs.load("citiscapes")


def test_saved_config_loads_back(tmp_path):
    config = configs.resolve("cityscapes", ["train.iters=5"])
    configs.save(config, tmp_path / "config.json")
    assert configs.resolve(str(tmp_path / "config.json")) == config
    assert not list(tmp_path.glob("*.tmp"))


def test_user_file_with_a_base(tmp_path):
    (tmp_path / "mine.json").write_text(json.dumps({"_base": "ade20k", "train": {"iters": 10}}))
    config = configs.resolve(str(tmp_path / "mine.json"))
    assert config["train"]["iters"] == 10 and config["data"]["dataset"] == "ade20k"
