"""The segmentation network: backbone -> head (baseline or CSFR) -> classifier, plus an auxiliary head.

`model(images)` returns logits at the input size. In training mode with labels it returns
{"logits", "losses"} where losses are already weighted: `ce`, `aux_ce` (aux_weight x CE of the
stage-3 head) and, for CSFR, `cac_intra` / `cac_inter`; the training loop sums them. The CAC
loss costs nothing at inference: it is only computed in training mode when labels are given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csfr.losses import SegmentationCrossEntropy
from csfr.models.csfr import CSFRHead
from csfr.models.layers import Classifier, ConvBNReLU
from csfr.models.resnet import ResNet
from csfr.models.weights import LoadReport
from csfr.ops.checks import check_label_values
from csfr.ops.layout import IGNORE_INDEX


class Segmentor(nn.Module):
    """backbone -> head -> classifier (+ auxiliary head). Inputs are checked before any work."""

    def __init__(self, backbone: ResNet, head: nn.Module, num_classes: int, aux_weight: float = 0.4,
                 dropout: float = 0.1, ignore_index: int = IGNORE_INDEX, norm: str = "bn"):
        super().__init__()
        self.backbone, self.head, self.num_classes = backbone, head, num_classes
        self.classifier = Classifier(head.channels, num_classes, dropout)
        self.aux_weight = aux_weight
        self.aux = None
        if aux_weight > 0:
            aux_ch = head.channels // 2
            self.aux = nn.Sequential(ConvBNReLU(backbone.stage3_channels, aux_ch, 3, norm=norm),
                                     Classifier(aux_ch, num_classes, dropout))
        self.ignore_index = ignore_index
        self.ce = SegmentationCrossEntropy(ignore_index)
        self.pretrained_report: LoadReport | None = None  # set by `build` when weights were loaded

    @property
    def is_csfr(self) -> bool:
        return isinstance(self.head, CSFRHead)

    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a [B, 3, H, W] tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] RGB, got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point (normalised), got {images.dtype}")
        stride = self.backbone.output_stride
        if min(images.shape[-2:]) < stride:
            raise ValueError(f"input {images.shape[-2]}x{images.shape[-1]} is smaller than output stride {stride} "
                             f"allows: it needs at least {stride}x{stride} pixels")

    def _check_labels(self, labels: Tensor, images: Tensor) -> None:
        """Shape, dtype and (eagerly; a compiled graph skips the data-dependent part) values."""
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a [B, H, W] tensor, got {type(labels).__name__}")
        if labels.dim() != 3:
            raise ValueError(f"labels must be a [B, H, W] label map, got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        if labels.shape[0] != images.shape[0] or labels.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}: "
                             "expected [B, H, W] of the image size")
        if labels.device != images.device:
            raise ValueError(f"labels are on {labels.device} but images are on {images.device}")
        if not torch.compiler.is_compiling():
            check_label_values(labels, self.num_classes, self.ignore_index, "model")

    def _decode(self, c4: Tensor) -> tuple[Tensor, Tensor | None]:
        """(features fed to the classifier, C-S features S or None)."""
        return self.head(c4) if self.is_csfr else (self.head(c4), None)

    def decode(self, c4: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Everything after the backbone, for stage-4 features computed elsewhere (a frozen,
        cached backbone: docs/study.md, "The fair test").

        Args:
            c4: stage-4 features [B, C4, h, w].
            size: (H, W) of the logits.
        Returns:
            (logits [B, K, H, W], the classifier's input z [B, C, h, w], S [B, D, h, w] or None
            for a baseline).
        """
        z, s = self._decode(c4)
        return F.interpolate(self.classifier(z), size, mode="bilinear", align_corners=False), z, s

    def features(self, images: Tensor) -> Tensor:
        """The features the classifier sees (X for a baseline, the AAM output for CSFR), at 1/OS."""
        self._check_images(images)
        return self._decode(self.backbone(images)[1])[0]

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor | dict:
        self._check_images(images)
        with_losses = self.training and labels is not None
        if with_losses:
            self._check_labels(labels, images)
        c3, c4 = self.backbone(images)
        logits, _, s = self.decode(c4, images.shape[-2:])
        if not with_losses:
            return logits
        losses = {"ce": self.ce(logits, labels)}
        if self.aux is not None:
            losses["aux_ce"] = self.aux_weight * self.ce(self.aux(c3), labels)
        if s is not None:
            losses.update(self.head.cac(s, labels))
        return {"logits": logits, "losses": losses}

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """Backbone at `lr`, everything else (heads, CSFLM, AAM, classifiers) at lr x head_lr_mult.
        The groups carry no weight decay of their own: the optimiser's applies to every parameter,
        BatchNorm and biases included, as in the protocol's reference code (PyTorch-Encoding)."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": backbone, "lr": lr, "name": "backbone"},
                {"params": rest, "lr": lr * head_lr_mult, "name": "head"}]
