"""The network: names, shapes and output stride, losses and gradients, the AAM fusion, bad input.

Weight loading, parameter counts and the summary CLI are in test_models_weights.py.
"""

import pytest
import torch
import torch.nn.functional as F

from csfr import configs, models
from csfr.losses import ClassAwareConsistencyLoss, SegmentationCrossEntropy
from csfr.models import registry
from csfr.models.resnet import ResNet

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


# a valid value other than the default for each CSFR-only option
_OTHER_VALUES = {"backend": "torch", "csfr_dim": 8, "csflm_convs": 1, "gate": "pixel", "aam_fuses": "head",
                 "cac_projection": 4, "cac_normalize": "image", "cac_centroids": "batch", "delta_v": 0.3,
                 "delta_d": 1.0, "w_intra": 0.5, "w_inter": 0.5}


@pytest.mark.parametrize("head", ["fcn", "deeplabv3", "pspnet"])
def test_baselines_ignore_the_csfr_options_and_csfr_uses_them(head):
    """registry.used_options drops CSFR_OPTIONS for a baseline (the study then trains a baseline once for
    every CAC setting): each must leave a baseline's weights and losses unchanged, and change CSFR."""
    assert set(_OTHER_VALUES) == set(registry.CSFR_OPTIONS)
    images, labels = batch()

    def fingerprint(name, **options):
        model = tiny(name, **options).train()
        torch.manual_seed(1)
        losses = model(images, labels)["losses"]
        return list(model.state_dict().items()), {k: v.item() for k, v in losses.items()}

    base = fingerprint(f"{head}_r50_d8")
    csfr_name = "csfr_r50_d8" if head == "fcn" else f"csfr_{head}_r50_d8"
    csfr = fingerprint(csfr_name)
    for key, value in _OTHER_VALUES.items():
        weights, losses = fingerprint(f"{head}_r50_d8", **{key: value})
        assert losses == base[1] and all(torch.equal(a[1], b[1]) for a, b in zip(weights, base[0])), key
        assert registry.used_options(f"{head}_r50_d8", {key: value}) == {}
        assert registry.used_options(csfr_name, {key: value}) == {key: value}
        if key != "backend":  # the backends agree to rounding: the torch one differs from cpu in last bits only
            changed = fingerprint(csfr_name, **{key: value})
            assert changed[1] != csfr[1] or len(changed[0]) != len(csfr[0]), key


def test_names_cover_every_family_and_unknown_names_list_them():
    names = models.names()
    assert len(names) == len(set(names)) == 24
    for head in ("fcn", "deeplabv3", "pspnet", "csfr", "csfr_deeplabv3", "csfr_pspnet"):
        for suffix in ("r50_d8", "r101_d8", "r50_d16", "r101_d16"):
            assert f"{head}_{suffix}" in names
    assert models.parse("csfr_r101_d8") == (True, "fcn", 101, 8)
    assert models.parse("deeplabv3_r50_d16") == (False, "deeplabv3", 50, 16)
    with pytest.raises(ValueError, match="unknown model 'csfr_r102_d8'; valid names: .*csfr_r101_d8"):
        models.build("csfr_r102_d8", K)


@pytest.mark.parametrize("name", ["fcn_r50_d8", "deeplabv3_r50_d8", "pspnet_r50_d16", "csfr_r50_d8",
                                  "csfr_deeplabv3_r50_d16", "csfr_pspnet_r101_d8", "fcn_r101_d16"])
def test_logits_at_input_size_and_features_at_the_output_stride(name):
    model = tiny(name).eval()
    images, _ = batch(65)
    with torch.no_grad():
        logits, feats = model(images), model.features(images)
    assert model.num_classes == K and isinstance(model.backbone, ResNet)
    assert logits.shape == (2, K, 65, 65)
    stride = 16 if name.endswith("d16") else 8
    assert feats.shape == (2, TINY["head_channels"], (65 - 1) // stride + 1, (65 - 1) // stride + 1)


def test_logits_are_the_classified_features_upsampled_bilinearly():
    model = tiny("csfr_pspnet_r50_d8").eval()
    images, _ = batch(41)
    with torch.no_grad():
        expected = F.interpolate(model.classifier(model.features(images)), (41, 41), mode="bilinear",
                                 align_corners=False)
        assert torch.allclose(model(images), expected, atol=1e-6)


def test_backbone_strides_dilations_and_stem():
    for os_, multi_grid, grid in ((8, (1, 2, 4), [4, 8, 16]), (16, (1, 2, 4), [2, 4, 8]), (8, None, [4, 4, 4])):
        net = ResNet(50, os_, deep_stem=True, multi_grid=multi_grid, width=8)
        c3, c4 = net(torch.randn(1, 3, 64, 64))
        assert c3.shape == (1, 8 * 16, 64 // os_, 64 // os_)  # stage 3 is at the output stride too
        assert c4.shape == (1, 8 * 32, 64 // os_, 64 // os_)
        assert [block.conv2.dilation[0] for block in net.layer4] == grid
        assert [block.conv2.stride[0] for block in net.layer4] == [1, 1, 1]
    net = ResNet(101, 16, width=8)
    assert [net.layer3[0].conv2.stride[0], net.layer3[1].conv2.dilation[0]] == [2, 1]
    assert len(net.layer3) == 23
    stem = ResNet(50, deep_stem=True, width=8).stem
    assert [tuple(stem[i].weight.shape) for i in (0, 3, 6)] == [(4, 3, 3, 3), (4, 4, 3, 3), (8, 4, 3, 3)]


@pytest.mark.parametrize("name, options", [("csfr_r50_d8", {}),
                                           ("csfr_deeplabv3_r50_d16", {"gate": "channel", "csfr_dim": 8}),
                                           ("csfr_pspnet_r50_d8", {"gate": "pixel"}),
                                           ("deeplabv3_r50_d8", {}), ("pspnet_r50_d16", {})])
def test_training_returns_weighted_losses_and_gradients_reach_every_parameter(name, options):
    model = tiny(name, **options).train()
    images, labels = batch()
    out = model(images, labels)
    csfr = name.startswith("csfr")
    assert set(out["losses"]) == {"ce", "aux_ce"} | ({"cac_intra", "cac_inter"} if csfr else set())
    assert out["logits"].shape == (2, K, 33, 33)
    sum(out["losses"].values()).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    if csfr:  # the CSFLM, the gate and (D != channels) the projection all learn
        assert any(n.startswith("head.csflm.") for n, _ in model.named_parameters())
        assert any(n.startswith("head.aam.gate") for n, _ in model.named_parameters())
        assert options.get("csfr_dim") is None or any(n.startswith("head.aam.project")
                                                      for n, _ in model.named_parameters())


def test_build_defaults_are_the_presets():
    """models.build("csfr_...") trains what the presets train: one source for the CSFR options."""
    preset = configs.load("base")["model"]["options"]
    assert {k: preset.get(k, v) for k, v in registry.DEFAULTS.items() if k in registry.CSFR_OPTIONS} == \
        {k: v for k, v in registry.DEFAULTS.items() if k in registry.CSFR_OPTIONS}


@pytest.mark.parametrize("normalize", ["none", "pixel", "image"])
def test_losses_and_fusion_are_the_documented_ones(normalize):
    model = tiny("csfr_r50_d8", w_intra=0.3, w_inter=0.2, delta_v=0.25, delta_d=1.0, cac_normalize=normalize).train()
    seen = {}
    model.head.aam.register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0], s=inputs[1], z=out))
    model.head.aam.gate.register_forward_hook(lambda m, inputs, out: seen.update(g=out))
    images, labels = batch()
    out = model(images, labels)
    x, s, z, g = seen["x"], seen["s"], seen["z"], seen["g"]
    assert g.shape == x.shape == s.shape
    assert torch.allclose(z, x + torch.sigmoid(g) * (s - x), atol=1e-6)
    scale = {"none": 1.0, "pixel": s.norm(dim=1, keepdim=True), "image": s.square().sum(1, keepdim=True).mean((2, 3), keepdim=True).sqrt()}[normalize]
    cac = ClassAwareConsistencyLoss(K, delta_v=0.25, delta_d=1.0, w_intra=0.3, w_inter=0.2)(s / scale, labels)
    factor = 1.0 if normalize == "none" else s.shape[1] ** 0.5  # docs/models.md, "The CAC loss's scale"
    for key in ("cac_intra", "cac_inter"):
        assert torch.allclose(out["losses"][key], factor * cac[key], rtol=1e-5)
    assert torch.allclose(out["losses"]["ce"], SegmentationCrossEntropy()(out["logits"], labels))


def test_bfloat16_autocast_training_gives_float32_losses():
    model = tiny("csfr_deeplabv3_r50_d8").train()
    images, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, labels)["losses"]
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.csflm[0][0].weight.grad is not None


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
    model.aux.register_forward_hook(lambda *a: calls.append("aux"))
    images, labels = batch()
    out = model(images, labels)
    assert isinstance(out, torch.Tensor) and not calls
    assert isinstance(model.train()(images), torch.Tensor) and not calls  # training without labels: logits too


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
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.1)]
    assert "weight_decay" not in groups[0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.backbone.parameters()}


def test_sync_batchnorm_conversion_and_option():
    images, labels = batch()
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(tiny("csfr_r50_d8"))
    assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    built = tiny("fcn_r50_d8", norm="syncbn")
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in built.modules())
    for net in (model, built):  # without a process group SyncBatchNorm acts as BatchNorm
        assert net.train()(images, labels)["logits"].shape == (2, K, 33, 33)


def test_compiled_model_matches_eager():
    model = tiny("csfr_r50_d8").eval()
    images, _ = batch(33, b=1)
    with torch.no_grad():
        eager = model(images)
        compiled = torch.compile(model, fullgraph=True)(images)
    assert torch.allclose(eager, compiled, atol=1e-4)


# -- bad input -------------------------------------------------------------------------------------

def test_bad_input_is_named_before_any_work():
    model = tiny("csfr_r50_d8").train()
    ran = []
    model.backbone.register_forward_pre_hook(lambda *a: ran.append(1))
    images, labels = batch()
    bad_labels = labels.clone()
    bad_labels[1, 20, 7] = 7
    cases = [
        (ValueError, r"\[B, 3, H, W\].*\(2, 4, 33, 33\)", (torch.randn(2, 4, 33, 33),)),
        (ValueError, r"\[B, 3, H, W\].*\(3, 33, 33\)", (torch.randn(3, 33, 33),)),
        (TypeError, "images must be a .* tensor, got list", ([1, 2],)),
        (TypeError, "floating point", (images.to(torch.uint8),)),
        (ValueError, "7x40 is smaller than output stride 8", (torch.randn(2, 3, 7, 40),)),
        (ValueError, r"labels \(2, 20, 33\) do not match images", (images, labels[:, :20])),
        (ValueError, r"labels must be a \[B, H, W\] label map, got \(2, 1, 33, 33\)", (images, labels[:, None])),
        (TypeError, "integer tensor, got torch.float32", (images, labels.float())),
        (ValueError, r"label value 7 at index \(1, 20, 7\) is outside \[0, 5\)", (images, bad_labels)),
    ]
    for error, message, args in cases:
        with pytest.raises(error, match=message):
            model(*args)
    with pytest.raises(ValueError, match="smaller than output stride 8"):
        model.features(torch.randn(1, 3, 5, 5))
    assert not ran
    assert isinstance(model.eval()(images, bad_labels), torch.Tensor)  # inference ignores labels


@pytest.mark.parametrize("options, error, message", [
    ({"widht": 8}, TypeError, "unknown model option.*widht"),
    ({"gate": "spatial"}, ValueError, "unknown gate 'spatial'; valid: pixel_channel, pixel, channel"),
    ({"norm": "gn"}, ValueError, "unknown norm 'gn'; valid: bn, syncbn"),
    ({"backend": "cudnn"}, ValueError, "unknown backend 'cudnn'; valid: auto, torch"),
    ({"head_channels": 0}, ValueError, "head_channels must be >= 1"),
    ({"csfr_dim": 8.0}, TypeError, "csfr_dim must be an integer"),
    ({"dropout": 1.0}, ValueError, "dropout must be >= 0 and < 1"),
    ({"aux_weight": -0.4}, ValueError, "aux_weight must be >= 0"),
    ({"delta_d": "1.5"}, TypeError, "delta_d must be a number"),
    ({"cac_normalize": True}, ValueError, "unknown cac_normalize True; valid: none, pixel, image"),
    ({"cac_centroids": "epoch"}, ValueError, "unknown cac_centroids 'epoch'; valid: image, batch"),
    ({"pretrained": "/nowhere/r50.pth"}, FileNotFoundError, "nothing is downloaded"),
])
def test_bad_options_are_named_before_anything_is_built(monkeypatch, options, error, message):
    monkeypatch.setattr(registry, "ResNet", lambda *a: pytest.fail("built before the options were checked"))
    with pytest.raises(error, match=message):
        models.build("csfr_r50_d8", K, **options)


@pytest.mark.parametrize("options, error, message", [
    ({"width": 0}, ValueError, "width must be >= 1, got 0"),
    ({"width": 1, "deep_stem": True}, ValueError, "width must be >= 2 with deep_stem"),
    ({"width": 8.5}, TypeError, "width must be an integer"),
    ({"multi_grid": (1, 2)}, ValueError, r"multi_grid must be 3 positive integers.*\(1, 2\)"),
    ({"multi_grid": (1, 0, 4)}, ValueError, "multi_grid must be 3 positive integers"),
])
def test_bad_backbone_options(options, error, message):
    with pytest.raises(error, match=message):
        models.build("fcn_r50_d8", K, **options)
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        models.build("fcn_r50_d8", 0)
