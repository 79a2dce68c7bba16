"""The CAC loss's strength carries across feature widths (docs/models.md, "The CAC loss's scale").

The presets' weight was tuned on 64-channel features; the real models have 512. With absolute
margins the loss is ~3x stronger there in gradient terms (and its inter term is 0 at
initialisation); the presets' normalised loss must keep its pull on the head within 2x.
"""

import pytest
import torch

from csfr import configs, models
from csfr.data import SyntheticScenes
from csfr.data.transforms import normalize

CSFR_PRESET = {k: v for k, v in configs.load("base")["model"]["options"].items()
               if k in models.registry.CSFR_OPTIONS}


def scenes(n=4, size=64):
    ds = SyntheticScenes("train", 8, size)
    items = [ds.scene(i) for i in range(n)]
    return (torch.stack([torch.from_numpy(normalize(image)) for image, _ in items]),
            torch.stack([torch.from_numpy(label) for _, label in items]))


def cac_to_ce_gradient(width: int, **options) -> float:
    """||d CAC / d theta|| / ||d CE / d theta|| over the baseline head's parameters theta (which
    both losses reach), at initialisation, for head and C-S features of `width` channels."""
    torch.manual_seed(0)
    model = models.build("csfr_r50_d8", 8, width=16, head_channels=width, backend="torch",
                         **{**CSFR_PRESET, "csfr_dim": width, **options}).train()
    losses = model(*scenes())["losses"]
    params = list(model.head.head.parameters())

    def norm(loss):
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)]).norm()

    return (norm(losses["cac_intra"] + losses["cac_inter"]) / norm(losses["ce"])).item()


def test_the_presets_cac_pulls_alike_at_64_and_512_channels():
    ratio = cac_to_ce_gradient(64) / cac_to_ce_gradient(512)
    assert 0.5 <= ratio <= 2, ratio


@pytest.mark.parametrize("normalize, margins", [("none", (0.5, 1.5)), ("pixel", (0.1, 0.5))])
def test_other_scales(normalize, margins):
    """The absolute loss (the old presets') fails the same check; the per-pixel one passes it."""
    options = {"cac_normalize": normalize, "delta_v": margins[0], "delta_d": margins[1]}
    ratio = cac_to_ce_gradient(64, **options) / cac_to_ce_gradient(512, **options)
    assert (0.5 <= ratio <= 2) == (normalize != "none"), ratio


def test_the_normalised_loss_does_not_see_the_feature_scale():
    """Scaling an image's S by 10 leaves the "image"-normalised terms as they are; the absolute ones move."""
    torch.manual_seed(0)
    model = models.build("csfr_r50_d8", 8, width=8, head_channels=16, csfr_dim=16, backend="torch").train()
    s = torch.rand(2, 16, 8, 8)
    labels = torch.randint(0, 8, (2, 8, 8))
    for scale, same in (("image", True), ("none", False)):
        model.head.cac.normalize = scale
        a, b = model.head.cac(s, labels), model.head.cac(s * torch.tensor([10.0, 0.1])[:, None, None, None], labels)
        assert all(torch.allclose(a[k], b[k], rtol=1e-5) for k in a) == same
