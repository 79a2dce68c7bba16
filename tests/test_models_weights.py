"""Pretrained weights (torchvision and MMCV naming, the load report), parameter counts, summary CLI."""

import re

import pytest
import torch

from csfr import models
from csfr.models import load_pretrained
from csfr.models.resnet import ResNet
from csfr.models.summary import main as summary_main

TINY = {"width": 8, "head_channels": 16, "csfr_dim": 16}
K = 5
FC = 2048 * 1000 + 1000  # torchvision's ImageNet classifier: 2048 x 1000 weights + 1000 biases


def torchvision_keys(blocks=(3, 4, 6, 3)) -> list[str]:
    """torchvision's ResNet state_dict keys, written out from its documented layout."""
    def bn(prefix):
        return [f"{prefix}.{t}" for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    keys = ["conv1.weight", *bn("bn1")]
    for stage, n in enumerate(blocks, start=1):
        for i in range(n):
            block = f"layer{stage}.{i}"
            for j in (1, 2, 3):
                keys += [f"{block}.conv{j}.weight", *bn(f"{block}.bn{j}")]
            if i == 0:
                keys += [f"{block}.downsample.0.weight", *bn(f"{block}.downsample.1")]
    return keys + ["fc.weight", "fc.bias"]


def torchvision_state(net: ResNet) -> dict[str, torch.Tensor]:
    """A torchvision-format file made from our backbone: its tensors under torchvision's keys, plus an fc."""
    own = net.state_dict()
    state = {k: own[k].clone() for k in torchvision_keys() if not k.startswith("fc.")}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, net.stage4_channels), torch.randn(1000)
    return state


def randomise_buffers(net: ResNet) -> ResNet:
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_()
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)
    return net


def test_torchvision_layout_and_parameter_counts():
    assert len(torchvision_keys()) == 320  # len(torchvision.models.resnet50().state_dict())
    assert set(ResNet(50, width=8).state_dict()) == set(torchvision_keys()) - {"fc.weight", "fc.bias"}
    counts = {depth: sum(p.numel() for p in ResNet(depth).parameters()) for depth in (50, 101)}
    assert counts[50] + FC == 25_557_032  # torchvision resnet50
    assert counts[101] + FC == 44_549_160  # torchvision resnet101
    assert counts[101] == 42_500_160


def test_torchvision_state_dict_round_trips(tmp_path):
    torch.manual_seed(3)
    source = randomise_buffers(ResNet(50, width=8))
    torch.save(torchvision_state(source), tmp_path / "r50.pth")
    model = models.build("csfr_r50_d8", K, pretrained=str(tmp_path / "r50.pth"), **TINY)
    own = model.backbone.state_dict()
    assert own.keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        assert torch.equal(own[key], value), key
    report = model.pretrained_report
    assert report.clean and report.loaded == len(own) and report.ignored == ["fc.bias", "fc.weight"]
    assert "fc.weight" in str(report) and models.build("fcn_r50_d8", K, **TINY).pretrained_report is None


def test_mmcv_deep_stem_checkpoint_loads(tmp_path):
    source = randomise_buffers(ResNet(50, deep_stem=True, width=8))
    state = source.state_dict()
    for key in ("stem.0.weight", "stem.1.running_mean", "stem.3.weight", "stem.4.bias", "stem.6.weight",
                "stem.7.num_batches_tracked", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight"):
        assert key in state  # MMCV ResNetV1c's names
    wrapped = {"state_dict": {f"backbone.{k}": v for k, v in state.items()}, "meta": {"epoch": 1}}
    wrapped["state_dict"]["decode_head.conv_seg.weight"] = torch.zeros(1)
    torch.save(wrapped, tmp_path / "v1c.pth")
    net = ResNet(50, deep_stem=True, width=8)
    report = load_pretrained(net, tmp_path / "v1c.pth")
    assert report.clean and report.ignored == ["decode_head.conv_seg.weight"]
    for key, value in state.items():
        assert torch.equal(net.state_dict()[key], value), key


def test_distributed_and_trainer_checkpoints_load(tmp_path):
    source = ResNet(50, width=8)
    model_state = {f"module.backbone.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": model_state, "iteration": 3}, tmp_path / "ckpt.pt")
    net = ResNet(50, width=8)
    assert load_pretrained(net, tmp_path / "ckpt.pt").clean
    assert torch.equal(net.layer4[2].conv3.weight, source.layer4[2].conv3.weight)


def test_wrong_key_or_shape_is_reported(tmp_path):
    state = torchvision_state(ResNet(50, width=8))
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    state["layer9.weight"] = torch.zeros(1)
    del state["bn1.bias"]
    torch.save(state, tmp_path / "bad.pth")
    target = ResNet(50, width=8)
    before = target.layer1[1].conv1.weight.clone()
    with pytest.raises(ValueError) as err:
        load_pretrained(target, tmp_path / "bad.pth")
    text = str(err.value)
    assert "bn1.bias" in text and "layer9.weight" in text and "layer1.0.conv1.weight (3, 3, 1, 1) vs (8, 8, 1, 1)" in text
    assert torch.equal(target.layer1[1].conv1.weight, before)  # strict: nothing loaded
    with pytest.warns(UserWarning, match="loaded partially"):
        report = load_pretrained(target, tmp_path / "bad.pth", strict=False)
    assert report.missing == ["bn1.bias"] and report.unexpected == ["layer9.weight"]
    assert report.mismatched == ["layer1.0.conv1.weight (3, 3, 1, 1) vs (8, 8, 1, 1)"]
    assert report.loaded == len(target.state_dict()) - 2
    assert torch.equal(target.layer1[1].conv1.weight, state["layer1.1.conv1.weight"])
    with pytest.warns(UserWarning):
        model = models.build("fcn_r50_d8", K, pretrained=str(tmp_path / "bad.pth"), pretrained_strict=False, **TINY)
    assert model.pretrained_report.missing == ["bn1.bias"]


def test_stem_mismatch_and_unreadable_files(tmp_path):
    torch.save(torchvision_state(ResNet(50, width=8)), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match="hint: the file has a 7x7 stem .* deep_stem=False"):
        load_pretrained(ResNet(50, deep_stem=True, width=8), tmp_path / "r50.pth")
    torch.save(ResNet(50, deep_stem=True, width=8).state_dict(), tmp_path / "v1c.pth")
    with pytest.raises(ValueError, match="hint: the file has a deep stem .* deep_stem=True"):
        models.build("fcn_r50_d8", K, pretrained=str(tmp_path / "v1c.pth"), **TINY)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth cannot be read"):
        load_pretrained(ResNet(50, width=8), tmp_path / "junk.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth: expected a state_dict of tensors"):
        load_pretrained(ResNet(50, width=8), tmp_path / "list.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth do not exist"):
        load_pretrained(ResNet(50, width=8), tmp_path / "absent.pth")


# -- summary CLI -----------------------------------------------------------------------------------

def test_summary_counts_resnet101_as_torchvision(capsys):
    summary_main(["csfr_r101_d8", "--num-classes", "19"])
    text = capsys.readouterr().out
    assert re.search(r"^  backbone\s+42,500,160$", text, re.MULTILINE)
    assert re.search(r"torchvision's count\)\s+44,549,160", text)
    model = models.build("csfr_r101_d8", 19)
    parts = {p: int(n.replace(",", "")) for p, n in re.findall(r"^  (.+?)\s+([\d,]+)$", text, re.MULTILINE)}
    assert parts["total"] == sum(p.numel() for p in model.parameters())
    assert parts["total"] == sum(n for p, n in parts.items() if p != "total" and "fc" not in p)


def test_summary_flags_change_the_counts_and_errors_are_one_line(capsys):
    summary_main(["csfr_r50_d8", "--width", "8", "--head-channels", "16", "--csfr-dim", "8", "--gate", "pixel",
                  "--aux-weight", "0", "--csflm-convs", "1", "--deep-stem", "--num-classes", "3"])
    text = capsys.readouterr().out
    assert "csfr_r50_d8, 3 classes" in text and re.search(r"auxiliary head\s+0$", text, re.MULTILINE)
    assert re.search(r"CSFLM\s+1,168$", text, re.MULTILINE)  # one 3x3 conv 16 -> 8 (1,152) + BN (16)
    with pytest.raises(SystemExit) as exit_:
        summary_main(["fcn_r50_d8", "--width", "0"])
    assert exit_.value.code == 2 and "error: width must be >= 1, got 0" in capsys.readouterr().err


def test_summary_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        summary_main(["--help"])
    text = capsys.readouterr().out
    for flag in ("NAME", "--num-classes", "--width", "--head-channels", "--csfr-dim", "--csflm-convs", "--gate",
                 "--aux-weight", "--deep-stem", "44,549,160"):
        assert flag in text, flag
