"""The network: shapes and output stride, losses and gradients, weight loading, bad input."""

import re

import pytest
import torch

from csfr import models
from csfr.models import load_pretrained
from csfr.models.resnet import ResNet
from csfr.models.summary import main as summary_main

TINY = {"width": 8, "head_channels": 16, "csfr_dim": 16}
K = 5


def tiny(name, **options):
    torch.manual_seed(0)
    return models.build(name, K, **{**TINY, **options})


def batch(size=33, b=2):
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, K, (b, size, size), generator=gen)
    labels[:, :3] = 255
    return torch.randn(b, 3, size, size, generator=gen), labels


def test_names_cover_every_family():
    names = models.names()
    for expected in ("fcn_r101_d8", "deeplabv3_r101_d8", "pspnet_r101_d8", "csfr_r101_d8",
                     "csfr_deeplabv3_r101_d8", "csfr_pspnet_r101_d8", "fcn_r50_d16", "csfr_r50_d8"):
        assert expected in names


@pytest.mark.parametrize("name", ["fcn_r50_d8", "deeplabv3_r50_d8", "pspnet_r50_d16", "csfr_r50_d8",
                                  "csfr_deeplabv3_r50_d16", "csfr_pspnet_r50_d8"])
def test_logits_at_input_size_and_features_at_the_output_stride(name):
    model = tiny(name).eval()
    images, _ = batch(65)
    with torch.no_grad():
        logits, feats = model(images), model.features(images)
    assert logits.shape == (2, K, 65, 65)
    stride = int(name[-1]) if name.endswith("8") else 16
    assert feats.shape[-2:] == ((65 - 1) // stride + 1,) * 2


def test_backbone_strides_and_dilations():
    for os_, multi_grid in ((8, (1, 2, 4)), (16, None)):
        net = ResNet(50, os_, deep_stem=True, multi_grid=multi_grid, width=8)
        c3, c4 = net(torch.randn(1, 3, 64, 64))
        assert c4.shape[-1] == 64 // os_ and c3.shape[1] == 8 * 16 and c4.shape[1] == 8 * 32
    grid = ResNet(50, 8, multi_grid=(1, 2, 4), width=8).layer4
    assert [block.conv2.dilation[0] for block in grid] == [4, 8, 16]


def test_training_returns_weighted_named_losses_and_gradients_reach_every_parameter():
    model = tiny("csfr_r50_d8").train()
    images, labels = batch()
    out = model(images, labels)
    assert set(out["losses"]) == {"ce", "aux_ce", "cac_intra", "cac_inter"}
    assert out["logits"].shape == (2, K, 33, 33)
    sum(out["losses"].values()).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


def test_aux_weight_scales_the_auxiliary_loss_and_zero_removes_the_head():
    images, labels = batch()
    a = tiny("fcn_r50_d8", aux_weight=0.4).train()(images, labels)["losses"]
    b = tiny("fcn_r50_d8", aux_weight=0.8).train()(images, labels)["losses"]
    assert torch.allclose(b["aux_ce"], 2 * a["aux_ce"], rtol=1e-4)
    assert "cac_intra" not in a
    none = tiny("fcn_r50_d8", aux_weight=0)
    assert none.aux is None and "aux_ce" not in none.train()(images, labels)["losses"]


def test_eval_returns_logits_only_and_computes_no_cac(monkeypatch):
    model = tiny("csfr_r50_d8").eval()
    calls = []
    monkeypatch.setattr(model.head.cac, "forward", lambda *a: calls.append(1))
    images, labels = batch()
    out = model(images, labels)
    assert isinstance(out, torch.Tensor) and not calls
    assert isinstance(model.train()(images), torch.Tensor)  # training without labels: logits too


@pytest.mark.parametrize("gate, shape", [("pixel_channel", (2, 16, 5, 5)), ("pixel", (2, 1, 5, 5)),
                                         ("channel", (2, 16, 1, 1))])
def test_gate_variants(gate, shape):
    model = tiny("csfr_r50_d8", gate=gate, csfr_dim=8).eval()
    seen = {}
    model.head.aam.gate.register_forward_hook(lambda m, i, o: seen.update(g=o.shape))
    model(torch.randn(2, 3, 33, 33))
    assert seen["g"] == shape


def test_param_groups_give_the_head_ten_times_the_lr():
    model = tiny("csfr_r50_d8")
    groups = model.param_groups(0.01)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.1)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.backbone.parameters()}


def test_resnet101_parameter_count_matches_torchvision(capsys):
    # torchvision's resnet101 has 44,549,160 parameters including its 2048 x 1000 fc layer
    net = ResNet(101)
    assert sum(p.numel() for p in net.parameters()) + 2048 * 1000 + 1000 == 44_549_160
    summary_main(["csfr_r101_d8", "--num-classes", "19"])
    text = capsys.readouterr().out
    assert re.search(r"torchvision's count\)\s+44,549,160", text)


def test_summary_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        summary_main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--num-classes", "--width", "--head-channels", "--csfr-dim", "--deep-stem"):
        assert flag in text


def test_sync_batchnorm_conversion():
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(tiny("csfr_r50_d8"))
    assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    built = tiny("fcn_r50_d8", norm="syncbn")
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in built.modules())


def test_compiled_model_matches_eager():
    model = tiny("csfr_r50_d8").eval()
    images, _ = batch(33, b=1)
    with torch.no_grad():
        eager = model(images)
        compiled = torch.compile(model, fullgraph=True)(images)
    assert torch.allclose(eager, compiled, atol=1e-4)


def test_bad_input_is_named():
    model = tiny("csfr_r50_d8").train()
    images, labels = batch()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(2, 4, 33, 33\)"):
        model(torch.randn(2, 4, 33, 33))
    with pytest.raises(ValueError, match="smaller than output stride 8"):
        model(torch.randn(2, 3, 7, 40))
    with pytest.raises(ValueError, match="do not match images"):
        model(images, labels[:, :20])
    with pytest.raises(TypeError, match="integer tensor, got torch.float32"):
        model(images, labels.float())
    with pytest.raises(TypeError, match="floating point"):
        model(images.to(torch.uint8))
    with pytest.raises(ValueError, match="unknown model 'csfr_r102_d8'; valid names: .*csfr_r101_d8"):
        models.build("csfr_r102_d8", K)
    with pytest.raises(TypeError, match="unknown model option.*widht"):
        models.build("fcn_r50_d8", K, widht=8)


# -- pretrained weights ----------------------------------------------------------------------------

def torchvision_state(net):
    """A torchvision-named ResNet state_dict (with its fc) made from our own backbone."""
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, net.stage4_channels), torch.randn(1000)
    return state


def test_torchvision_state_dict_round_trips(tmp_path):
    torch.manual_seed(3)
    source = ResNet(50, width=8)
    for m in source.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_()
    torch.save(torchvision_state(source), tmp_path / "r50.pth")
    model = models.build("csfr_r50_d8", K, pretrained=str(tmp_path / "r50.pth"), **TINY)
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_mmcv_deep_stem_checkpoint_loads(tmp_path):
    source = ResNet(50, deep_stem=True, width=8)
    wrapped = {"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()},
               "meta": {}}
    wrapped["state_dict"]["decode_head.conv_seg.weight"] = torch.zeros(1)
    torch.save(wrapped, tmp_path / "v1c.pth")
    net = ResNet(50, deep_stem=True, width=8)
    report = load_pretrained(net, tmp_path / "v1c.pth")
    assert report.clean and report.ignored == ["decode_head.conv_seg.weight"]
    assert "stem.0.weight" in net.state_dict()
    assert torch.equal(net.stem[0].weight, source.stem[0].weight)


def test_wrong_key_or_shape_is_reported(tmp_path):
    state = torchvision_state(ResNet(50, width=8))
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    state["layer9.weight"] = torch.zeros(1)
    del state["bn1.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        load_pretrained(ResNet(50, width=8), tmp_path / "bad.pth")
    text = str(err.value)
    assert "bn1.bias" in text and "layer9.weight" in text and "layer1.0.conv1.weight (3, 3, 1, 1)" in text
    with pytest.warns(UserWarning, match="loaded partially"):
        report = load_pretrained(ResNet(50, width=8), tmp_path / "bad.pth", strict=False)
    assert report.missing == ["bn1.bias"] and report.loaded > 0
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_pretrained(ResNet(50, width=8), tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="stem"):
        load_pretrained(ResNet(50, deep_stem=True, width=8), tmp_path / "bad.pth")
