"""The CSFR head: CSFLM (C-S features trained by the CAC loss) and AAM (gated fusion with X).

CSFLM maps the head features X to the consistent-separable features S (`dim` channels) with
conv-BN-ReLU layers; the CAC loss pulls S towards its class centroid and pushes centroids apart.
AAM computes gate logits G from [X, S] and fuses z = X + sigmoid(G) (S' - X) with the fused
`gated_blend` operator, S' being S (or S projected to X's width when `dim` differs). The gate is
per pixel and channel by default; "pixel" gives one gate per pixel, "channel" an SE-style gate
per channel from globally pooled [X, S].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from csfr.losses import ClassAwareConsistencyLoss
from csfr.models.layers import ConvBNReLU
from csfr.ops import gated_blend

GATES = ("pixel_channel", "pixel", "channel")


def check_gate(gate: str) -> None:
    if gate not in GATES:
        raise ValueError(f"unknown gate {gate!r}; valid: {', '.join(GATES)}")


class CSFLM(nn.Sequential):
    """Consistent-separable feature learning: 3x3 then 1x1 conv-BN-ReLU layers (`num_convs` in all)."""

    def __init__(self, in_ch: int, dim: int, num_convs: int = 2, norm: str = "bn"):
        super().__init__(*(ConvBNReLU(in_ch if i == 0 else dim, dim, 3 if i == 0 else 1, norm=norm)
                           for i in range(num_convs)))


class AAM(nn.Module):
    """Adaptive aggregation: gate logits from [X, S], fused by gated_blend."""

    def __init__(self, channels: int, dim: int, gate: str = "pixel_channel", norm: str = "bn",
                 backend: str = "auto"):
        super().__init__()
        check_gate(gate)
        self.gate_kind, self.backend = gate, backend
        self.project = nn.Identity() if dim == channels else ConvBNReLU(dim, channels, 1, norm=norm)
        both = channels + dim
        if gate == "channel":
            hidden = max(channels // 4, 1)
            self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(both, hidden, 1), nn.ReLU(inplace=True),
                                      nn.Conv2d(hidden, channels, 1))
        else:
            self.gate = nn.Conv2d(both, channels if gate == "pixel_channel" else 1, 1)
        nn.init.zeros_(self.gate[-1].bias if gate == "channel" else self.gate.bias)  # start at an even mix

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        logits = self.gate(torch.cat([x, s], 1))
        return gated_blend(x, self.project(s).to(x.dtype), logits.to(x.dtype), backend=self.backend)


class CSFRHead(nn.Module):
    """Wraps a baseline head: X = head(c4) -> S = CSFLM(X) -> z = AAM(X, S). `forward` returns
    (z, S); the CAC loss on S is computed by `cac(S, labels)`."""

    def __init__(self, head: nn.Module, num_classes: int, dim: int = 512, gate: str = "pixel_channel",
                 csflm_convs: int = 2, delta_v: float = 0.5, delta_d: float = 1.5, w_intra: float = 1.0,
                 w_inter: float = 1.0, ignore_index: int = 255, norm: str = "bn", backend: str = "auto"):
        super().__init__()
        self.head, self.channels = head, head.channels
        self.csflm = CSFLM(head.channels, dim, csflm_convs, norm)
        self.aam = AAM(head.channels, dim, gate, norm, backend)
        self.cac = ClassAwareConsistencyLoss(num_classes, delta_v, delta_d, w_intra, w_inter, ignore_index, backend)

    def forward(self, c4: Tensor) -> tuple[Tensor, Tensor]:
        x = self.head(c4)
        s = self.csflm(x)
        return self.aam(x, s), s
