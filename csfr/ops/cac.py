"""cac_loss: the Class-Aware Consistency loss as a fused torch.library custom op.

On every kernel backend the loss is one op, `cac_loss` of the backend's library (csfr::, csfr_emulated::,
which runs the CUDA code on the CPU, or csfr_triton::), with a backward op of its own (in C++ on the C++
backends, csrc/fused_autograd.h): on a GPU four launches forward (a clear, segment_sum, cac_pixel_pass,
the class part; Triton adds a one-program finish) and one backward (docs/kernels.md, "The fused ops"),
with no host synchronisation. The torch backend is the reference (csfr.ops.reference).
"""

from __future__ import annotations

import torch
from torch import Tensor

from csfr.ops import checks, reference
from csfr.ops.checks import check_features_labels, check_finite_features, check_label_values
from csfr.ops.dispatch import fused, resolve
from csfr.ops.layout import IGNORE_INDEX, flat_features, flat_labels


def _check_margins(delta_v: float, delta_d: float) -> None:
    if delta_v < 0 or delta_d < 0:
        raise ValueError(f"cac_loss: margins must be >= 0, got delta_v={delta_v}, delta_d={delta_d}")


def _fused(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float, delta_d: float, w_intra: float,
           w_inter: float, ignore_index: int, name: str) -> tuple[Tensor, Tensor]:
    """(loss, terms) of the fused op of a kernel backend. On CPU tensors (cpu, and Triton's interpreter) the
    values are checked on the host (an error naming the label, or the image and class of a non-finite
    feature); the CUDA code path (cuda, and cuda_emulated on CPU tensors) and Triton on a GPU read nothing
    back: a bad label is a device-side assertion (NaN on Triton) and a non-finite feature makes the terms NaN."""
    host = checks.fused_host_checks(name, labels)
    if host:
        check_label_values(labels, num_classes, ignore_index, "cac_loss")
    loss, terms, _ = fused(name, "cac_loss")(flat_features(feats), flat_labels(labels), num_classes, float(delta_v),
                                            float(delta_d), float(w_intra), float(w_inter), ignore_index)
    if host and not bool(torch.isfinite(terms).all()):
        check_finite_features(feats, labels, ignore_index, "cac_loss")  # raises, naming where
    return loss, terms


def _checked_backend(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float, delta_d: float,
                     backend: str) -> str:
    """The argument checks of cac_terms and cac_loss, done once per call; returns the concrete backend."""
    check_features_labels(feats, labels, num_classes, "cac_loss")
    _check_margins(delta_v, delta_d)
    return resolve(backend, feats.device)


def _reference_terms(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float, delta_d: float,
                     ignore_index: int) -> Tensor:
    """The terms on the torch backend (the reference), after the value checks it cannot do itself."""
    if not torch.compiler.is_compiling():
        check_label_values(labels, num_classes, ignore_index, "cac_loss")
        check_finite_features(feats, labels, ignore_index, "cac_loss")
    return reference.cac_terms(feats, labels, num_classes, delta_v, delta_d, ignore_index)


def cac_terms(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float = 0.5,
              delta_d: float = 1.5, ignore_index: int = IGNORE_INDEX, backend: str = "auto") -> Tensor:
    """The unweighted (intra, inter) CAC terms (docs/design.md, operator 2).

    Args:
        feats: C-S features [B, D, *spatial] (float32, float16, bfloat16 or float64).
        labels: [B, *spatial] at the features' size, any integer dtype; values in
            [0, num_classes) or `ignore_index`.
        num_classes: K.
        delta_v, delta_d: the pull and push margins (>= 0), in the features' units.
        ignore_index: label of the pixels that count nowhere (default 255).
        backend: "auto", "torch", "cpu", "cuda" or "triton".

    Returns:
        [2] tensor (intra, inter), float32 (float64 for float64 features); differentiable in feats.
    """
    name = _checked_backend(feats, labels, num_classes, delta_v, delta_d, backend)
    if name == "torch":
        return _reference_terms(feats, labels, num_classes, delta_v, delta_d, ignore_index)
    return _fused(feats, labels, num_classes, delta_v, delta_d, 1.0, 1.0, ignore_index, name)[1]


def cac_loss(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float = 0.5,
             delta_d: float = 1.5, w_intra: float = 1.0, w_inter: float = 1.0,
             ignore_index: int = IGNORE_INDEX, backend: str = "auto") -> Tensor:
    """Class-Aware Consistency loss, w_intra * intra + w_inter * inter (docs/design.md, operator 2).

    Args: as `cac_terms`, plus w_intra, w_inter: the terms' weights.

    Returns:
        A scalar, float32 (float64 for float64 features). NaN/Inf features raise on CPU tensors;
        on a GPU (where raising would cost a host synchronisation) the loss is NaN instead, and a
        label outside [0, num_classes) that is not ignored fails a device-side assertion (cuda) or
        makes the loss NaN (triton); the training loop checks labels on the CPU before they reach the GPU.
    """
    name = _checked_backend(feats, labels, num_classes, delta_v, delta_d, backend)
    if name == "torch":
        terms = _reference_terms(feats, labels, num_classes, delta_v, delta_d, ignore_index)
        return reference.weighted_loss(terms, w_intra, w_inter)
    return _fused(feats, labels, num_classes, delta_v, delta_d, w_intra, w_inter, ignore_index, name)[0]
