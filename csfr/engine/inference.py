"""Test-time inference: whole image or sliding window, at several scales, with flipping."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csfr.engine.precision import autocast


def _windows(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of `crop` that cover [0, size) with the given stride, the last
    one flush with the end."""
    starts = list(range(0, max(size - crop, 0) + 1, stride))
    if starts[-1] + crop < size:
        starts.append(size - crop)
    return starts


def slide_logits(model: nn.Module, image: Tensor, crop: Sequence[int], stride: Sequence[int]) -> Tensor:
    """Logits [B,K,H,W] averaged over overlapping crop windows; an image smaller than the window is
    padded (with 0, the normalised mean colour) and the padding cut off again."""
    (ch, cw), (sh, sw) = crop, stride
    _, _, h, w = image.shape
    padded = F.pad(image, (0, max(cw - w, 0), 0, max(ch - h, 0)))
    ph, pw = padded.shape[-2:]
    total, count = None, torch.zeros(1, 1, ph, pw, device=image.device)
    for y in _windows(ph, ch, sh):
        for x in _windows(pw, cw, sw):
            logits = model(padded[:, :, y:y + ch, x:x + cw]).float()
            if total is None:
                total = torch.zeros(*logits.shape[:2], ph, pw, device=image.device)
            total[:, :, y:y + ch, x:x + cw] += logits
            count[:, :, y:y + ch, x:x + cw] += 1
    return (total / count)[:, :, :h, :w]


def logits_at(model: nn.Module, image: Tensor, mode: str, crop: Sequence[int], stride: Sequence[int]) -> Tensor:
    if mode == "whole":
        return model(image).float()
    if mode == "slide":
        return slide_logits(model, image, crop, stride)
    raise ValueError(f"eval.mode must be whole or slide, got {mode!r}")


@torch.no_grad()
def predict(model: nn.Module, image: Tensor, out_size: Sequence[int], mode: str = "whole",
            crop: Sequence[int] = (512, 512), stride: Sequence[int] = (341, 341),
            scales: Sequence[float] = (1.0,), flip: bool = False) -> Tensor:
    """Class probabilities [B,K,*out_size]: the softmax averaged over the scales (image resized by
    each factor) and, with flip, their horizontal mirrors. The model must be in eval mode."""
    h, w = image.shape[-2:]
    probs = None
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = image if size == (h, w) else F.interpolate(image, size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            view = scaled.flip(-1) if mirrored else scaled
            logits = logits_at(model, view, mode, crop, stride)
            logits = logits.flip(-1) if mirrored else logits
            p = F.interpolate(logits, tuple(out_size), mode="bilinear", align_corners=False).softmax(1)
            probs = p if probs is None else probs + p
    return probs / (len(scales) * (2 if flip else 1))


def label_maps(model: nn.Module, image: Tensor, out_size: Sequence[int], eval_cfg: dict, amp: str = "none") -> Tensor:
    """Label maps [B,*out_size] (int64): the argmax of `predict` with the settings of a config's
    `eval` section (mode, crop_size, stride, scales, flip), under `amp` autocast. The evaluator and
    `csfr.load`'s predictor both call it, so a prediction is the label map the evaluation scores."""
    with autocast(image.device, amp):
        probs = predict(model, image, out_size, eval_cfg["mode"], eval_cfg["crop_size"], eval_cfg["stride"],
                        eval_cfg["scales"], eval_cfg["flip"])
    return probs.argmax(1)
