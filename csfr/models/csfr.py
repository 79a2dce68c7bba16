"""The CSFR head: CSFLM (C-S features trained by the CAC loss) and AAM (gated fusion with X).

CSFLM maps the head features X to the consistent-separable features S (`dim` channels) with
conv-BN-ReLU layers; the CAC loss pulls S towards its class centroid and pushes centroids apart.
AAM computes gate logits G from [X, S] and fuses z = X + sigmoid(G) (S' - X) with the fused
`gated_blend` operator, S' being S (or S projected to X's width when `dim` differs). The gate is
per pixel and channel by default; "pixel" gives one gate per pixel, "channel" an SE-style gate
per channel from globally pooled [X, S], "fixed" no learned gate at all (z = (X + S') / 2, the
ablation's "CSFLM without AAM").

Study options (the paper leaves them open; see docs/study.md): the CAC loss can see S, its
per-pixel L2-normalised form, or a 1x1 linear projection of it (`cac_projection` channels), and
the AAM can fuse S with X (`aam_fuses="head"`) or with the backbone's stage-4 features
(`"backbone"`, brought to X's width by a 1x1 conv-BN-ReLU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csfr.losses import ClassAwareConsistencyLoss
from csfr.models.layers import ConvBNReLU
from csfr.ops import gated_blend

GATES = ("pixel_channel", "pixel", "channel", "fixed")
AAM_INPUTS = ("head", "backbone")


def check_gate(gate: str) -> None:
    if gate not in GATES:
        raise ValueError(f"unknown gate {gate!r}; valid: {', '.join(GATES)}")


def check_aam_input(fuses: str) -> None:
    if fuses not in AAM_INPUTS:
        raise ValueError(f"unknown aam_fuses {fuses!r}; valid: {', '.join(AAM_INPUTS)}")


class CSFLM(nn.Sequential):
    """Consistent-separable feature learning: 3x3 then 1x1 conv-BN-ReLU layers (`num_convs` in all)."""

    def __init__(self, in_ch: int, dim: int, num_convs: int = 2, norm: str = "bn"):
        super().__init__(*(ConvBNReLU(in_ch if i == 0 else dim, dim, 3 if i == 0 else 1, norm=norm)
                           for i in range(num_convs)))


class AAM(nn.Module):
    """Adaptive aggregation: gate logits from [X, S], fused by gated_blend ("fixed": an even mix)."""

    def __init__(self, channels: int, dim: int, gate: str = "pixel_channel", norm: str = "bn",
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
    """The CAC loss on S (default), on a 1x1 linear projection of it (`projection` channels, the
    discriminative loss's small embedding) and/or on its per-pixel L2-normalised form (unit norm,
    so the margins are relative to the feature scale). Training only: inference never runs it."""

    def __init__(self, loss: ClassAwareConsistencyLoss, dim: int, projection: int = 0, normalize: bool = False):
        super().__init__()
        self.loss, self.normalize = loss, normalize
        self.embed = nn.Conv2d(dim, projection, 1) if projection else None

    def forward(self, s: Tensor, labels: Tensor) -> dict[str, Tensor]:
        if self.embed is not None:
            s = self.embed(s)
        if self.normalize:
            s = F.normalize(s, dim=1)
        return self.loss(s, labels)


class CSFRHead(nn.Module):
    """Wraps a baseline head: X = head(c4) -> S = CSFLM(X) -> z = AAM(X, S) (or AAM(R(c4), S) with
    `aam_fuses="backbone"`, R a 1x1 conv-BN-ReLU from the `in_ch` stage-4 channels to X's width).
    `forward` returns (z, S); the CAC loss on S is computed by `cac(S, labels)`."""

    def __init__(self, head: nn.Module, num_classes: int, dim: int = 512, gate: str = "pixel_channel",
                 csflm_convs: int = 2, delta_v: float = 0.5, delta_d: float = 1.5, w_intra: float = 1.0,
                 w_inter: float = 1.0, ignore_index: int = 255, norm: str = "bn", backend: str = "auto",
                 aam_fuses: str = "head", in_ch: int | None = None, cac_projection: int = 0,
                 cac_normalize: bool = False):
        super().__init__()
        check_aam_input(aam_fuses)
        if aam_fuses == "backbone" and in_ch is None:
            raise ValueError("aam_fuses='backbone' needs in_ch, the stage-4 channel count")
        self.head, self.channels = head, head.channels
        self.csflm = CSFLM(head.channels, dim, csflm_convs, norm)
        self.reduce = ConvBNReLU(in_ch, head.channels, 1, norm=norm) if aam_fuses == "backbone" else None
        self.aam = AAM(head.channels, dim, gate, norm, backend)
        loss = ClassAwareConsistencyLoss(num_classes, delta_v, delta_d, w_intra, w_inter, ignore_index, backend)
        self.cac = CACOnS(loss, dim, cac_projection, cac_normalize)

    def forward(self, c4: Tensor) -> tuple[Tensor, Tensor]:
        x = self.head(c4)
        s = self.csflm(x)
        return self.aam(x if self.reduce is None else self.reduce(c4), s), s
