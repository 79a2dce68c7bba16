"""The CSFR head: CSFLM (C-S features trained by the CAC loss) and AAM (gated fusion with the
backbone's features).

CSFLM maps the head features X to the consistent-separable features S (`dim` channels) with
conv-BN-ReLU layers; the CAC loss pulls S towards its class centroid and pushes centroids apart.
AAM fuses S with the backbone's stage-4 features brought to X's width, B = R(c4) (the abstract:
"the C-S features and original features from backbone"; `aam_fuses="head"` fuses with X
instead): gate logits G from [B, S], z = B + sigmoid(G) (S' - B) with the fused `gated_blend`
operator, S' being S (or S projected to B's width when `dim` differs). The gate is
per pixel and channel by default; "pixel" gives one gate per pixel, "channel" an SE-style gate
per channel from globally pooled [B, S], "fixed" no learned gate at all (z = (B + S') / 2, the
ablation's "CSFLM without AAM").

Study options (the paper leaves them open; see docs/study.md): the CAC loss can see S or a 1x1
linear projection of it (`cac_projection` channels), at its own scale, per-pixel L2-normalised or
divided by each image's RMS norm (`cac_normalize`), with centroids per image or per batch
(`cac_centroids`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csfr.losses import ClassAwareConsistencyLoss
from csfr.models.layers import ConvBNReLU
from csfr.ops import gated_blend
from csfr.ops.layout import IGNORE_INDEX

GATES = ("pixel_channel", "pixel", "channel", "fixed")
AAM_INPUTS = ("head", "backbone")
NORMALIZE = ("none", "pixel", "image")


def check_gate(gate: str) -> None:
    if gate not in GATES:
        raise ValueError(f"unknown gate {gate!r}; valid: {', '.join(GATES)}")


def check_aam_input(fuses: str) -> None:
    if fuses not in AAM_INPUTS:
        raise ValueError(f"unknown aam_fuses {fuses!r}; valid: {', '.join(AAM_INPUTS)}")


def check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZE:
        raise ValueError(f"unknown cac_normalize {normalize!r}; valid: {', '.join(NORMALIZE)}")


class CSFLM(nn.Sequential):
    """Consistent-separable feature learning: 3x3 then 1x1 conv-BN-ReLU layers (`num_convs` in all)."""

    def __init__(self, in_ch: int, dim: int, *, num_convs: int = 2, norm: str = "bn"):
        super().__init__(*(ConvBNReLU(in_ch if i == 0 else dim, dim, 3 if i == 0 else 1, norm=norm)
                           for i in range(num_convs)))


class AAM(nn.Module):
    """Adaptive aggregation: gate logits from [X, S], fused by gated_blend ("fixed": an even mix)."""

    def __init__(self, channels: int, dim: int, *, gate: str = "pixel_channel", norm: str = "bn",
                 backend: str = "auto"):
        super().__init__()
        check_gate(gate)
        self.gate_kind, self.backend = gate, backend
        self.project = nn.Identity() if dim == channels else ConvBNReLU(dim, channels, 1, norm=norm)
        both = channels + dim
        if gate == "fixed":
            self.gate = None
        elif gate == "channel":
            hidden = max(channels // 4, 1)
            self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(both, hidden, 1), nn.ReLU(inplace=True),
                                      nn.Conv2d(hidden, channels, 1))
            nn.init.zeros_(self.gate[-1].bias)  # start at an even mix
        else:
            self.gate = nn.Conv2d(both, channels if gate == "pixel_channel" else 1, 1)
            nn.init.zeros_(self.gate.bias)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        s_proj = self.project(s).to(x.dtype)
        if self.gate is None:
            return 0.5 * (x + s_proj)
        logits = self.gate(torch.cat([x, s], 1))
        return gated_blend(x, s_proj, logits.to(x.dtype), backend=self.backend)


class CACOnS(nn.Module):
    """The CAC loss on S (default) or on a 1x1 linear projection of it (`projection` channels, the
    discriminative loss's small embedding), at the scale `normalize` sets:

    - "none": S as it is; the margins are absolute, so the loss's strength grows with the feature
      scale (post-ReLU S of D channels has norms ~ sqrt(D)).
    - "pixel": each pixel's feature L2-normalised (unit vectors: distances at most 2).
    - "image": each image's S divided by its root-mean-square feature norm (detached), so the
      mean squared norm is 1 and the margins are relative to the features' scale, while the
      geometry (relative distances, norms) of S is kept. Per image, so that data-parallel training
      on shards of a batch computes what one process computes on the whole.

    Both normalised forms multiply the two terms by sqrt(D): the gradient through a division by a
    norm ~ sqrt(D) shrinks like 1 / sqrt(D), while the cross-entropy's gradient on the head does
    not depend on D, so without the factor a weight tuned at D = 64 would be ~2.8x weaker at
    D = 512 (with "none", ~3x stronger). Tested in tests/test_models_cac_scale.py.

    Training only: inference never runs it."""

    def __init__(self, loss: ClassAwareConsistencyLoss, dim: int, *, projection: int = 0, normalize: str = "none"):
        super().__init__()
        check_normalize(normalize)
        self.loss, self.normalize = loss, normalize
        self.embed = nn.Conv2d(dim, projection, 1) if projection else None

    def forward(self, s: Tensor, labels: Tensor) -> dict[str, Tensor]:
        if self.embed is not None:
            s = self.embed(s)
        if self.normalize == "none":
            return self.loss(s, labels)
        if self.normalize == "pixel":
            s = F.normalize(s, dim=1)
        else:
            rms = s.detach().float().square().sum(1, keepdim=True).mean((2, 3), keepdim=True).sqrt()
            s = s / rms.clamp_min(1e-12).to(s.dtype)
        return {name: term * s.shape[1] ** 0.5 for name, term in self.loss(s, labels).items()}


class CSFRHead(nn.Module):
    """Wraps a baseline head: X = head(c4) -> S = CSFLM(X) -> z = AAM(R(c4), S), R a 1x1
    conv-BN-ReLU from the `in_ch` stage-4 channels to X's width (the abstract's "C-S features and
    original features from backbone"), or z = AAM(X, S) with `aam_fuses="head"`.

    Args:
        head: the baseline head (its `channels` attribute is X's width C).
        num_classes: K, for the CAC loss.
        dim: channels D of S.
        gate: AAM gate, one of GATES.
        csflm_convs: conv-BN-ReLU layers of the CSFLM.
        delta_v, delta_d, w_intra, w_inter, ignore_index, backend: the CAC loss's (see
            ClassAwareConsistencyLoss).
        norm: "bn" or "syncbn".
        aam_fuses: "backbone" (default) or "head", what the AAM fuses S with.
        in_ch: stage-4 channels (needed with aam_fuses="backbone").
        cac_projection: CAC on S (0) or on a 1x1 linear projection of S to this many channels.
        cac_normalize: "none", "pixel" or "image" (see CACOnS).
        cac_centroids: "image" or "batch" (see ClassAwareConsistencyLoss).

    `forward(c4 [B, in_ch, h, w])` returns (z [B, C, h, w], S [B, D, h, w]); the CAC loss on S is
    `cac(S, labels)`.
    """

    def __init__(self, head: nn.Module, num_classes: int, *, dim: int = 512, gate: str = "pixel_channel",
                 csflm_convs: int = 2, delta_v: float = 0.5, delta_d: float = 1.5, w_intra: float = 1.0,
                 w_inter: float = 1.0, ignore_index: int = IGNORE_INDEX, norm: str = "bn", backend: str = "auto",
                 aam_fuses: str = "backbone", in_ch: int | None = None, cac_projection: int = 0,
                 cac_normalize: str = "none", cac_centroids: str = "image"):
        super().__init__()
        check_aam_input(aam_fuses)
        if aam_fuses == "backbone" and in_ch is None:
            raise ValueError("aam_fuses='backbone' needs in_ch, the stage-4 channel count")
        self.head, self.channels = head, head.channels
        self.csflm = CSFLM(head.channels, dim, num_convs=csflm_convs, norm=norm)
        self.reduce = ConvBNReLU(in_ch, head.channels, 1, norm=norm) if aam_fuses == "backbone" else None
        self.aam = AAM(head.channels, dim, gate=gate, norm=norm, backend=backend)
        loss = ClassAwareConsistencyLoss(num_classes, delta_v=delta_v, delta_d=delta_d, w_intra=w_intra,
                                         w_inter=w_inter, ignore_index=ignore_index, backend=backend,
                                         centroids=cac_centroids)
        self.cac = CACOnS(loss, dim, projection=cac_projection, normalize=cac_normalize)

    def forward(self, c4: Tensor) -> tuple[Tensor, Tensor]:
        x = self.head(c4)
        s = self.csflm(x)
        return self.aam(x if self.reduce is None else self.reduce(c4), s), s
