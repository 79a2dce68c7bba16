"""Every config field is checked against one schema: a wrong type or range is one line naming the key,
the value and what is expected; every preset passes."""

import json
import subprocess
import sys

import pytest

from csfr import configs


@pytest.mark.parametrize("name", configs.names())
def test_every_preset_validates(name):
    configs.validate(configs.load(name))


@pytest.mark.parametrize("assignment, message", [
    ("train.lr=abc", "train.lr must be a number > 0, got 'abc'"),
    ("train.lr=0", "train.lr must be a number > 0, got 0"),
    ("train.iters=1.5", "train.iters must be an integer >= 1, got 1.5"),
    ("train.batch_size=true", "train.batch_size must be an integer >= 1, got True"),
    ("train.momentum=1", r"train.momentum must be a number in \[0, 1\), got 1"),
    ("train.amp=half", "train.amp must be one of 'none', 'bfloat16', 'float16', got 'half'"),
    ("train.device=gpu", "train.device must be one of 'auto', 'cpu', 'cuda', got 'gpu'"),
    ("train.sync_bn=1", "train.sync_bn must be true or false, got 1"),
    ("data.workers=-1", "data.workers must be an integer >= 0, got -1"),
    ("data.crop_size=[64]", r"data.crop_size must be an integer >= 1 or a pair \[a, b\] .*, got \[64\]"),
    ("data.ratio_range=[2.0,0.5]", r"data.ratio_range must be an ascending pair .*, got \[2.0, 0.5\]"),
    ("eval.scales=[]", "eval.scales must be a non-empty list of numbers in \\[0.125, 4.0\\], got \\[\\]"),
    ("eval.stride=[16,0]", r"eval.stride must be a pair \[h, w\] of integers >= 1, got \[16, 0\]"),
    ("eval.mode=sliding", "eval.mode must be one of 'whole', 'slide', got 'sliding'"),
    ("model.options=3", "model.options must be an object of key: value pairs, got 3"),
])
def test_wrong_type_or_range_names_key_value_and_expectation(assignment, message):
    with pytest.raises(ValueError, match=f"^config: {message}$"):
        configs.resolve("synthetic", [assignment])


def test_numbers_accept_integers_and_open_sections_accept_new_keys():
    config = configs.resolve("synthetic", ["train.lr=1", "model.options.gate=pixel", "data.options.size=48"])
    assert config["train"]["lr"] == 1 and config["model"]["options"]["gate"] == "pixel"


def test_config_file_with_an_unknown_or_missing_key(tmp_path):
    config = configs.load("synthetic")
    config["train"]["itres"] = 3
    (tmp_path / "bad.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown key 'itres' in train; valid keys: accum_steps, amp"):
        configs.resolve(str(tmp_path / "bad.json"))
    del config["train"]["itres"], config["eval"]["flip"]
    (tmp_path / "bad.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="^config: eval.flip is missing$"):
        configs.resolve(str(tmp_path / "bad.json"))


def test_cli_answers_a_wrong_type_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "csfr.train", "--set", "train.lr=abc", "--print-config"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr == "csfr.train: error: config: train.lr must be a number > 0, got 'abc'\n"
