"""The Triton backend's fused ops as torch.library custom ops, csfr_triton::*, with the schemas of the C++
ones (csrc/schemas.h: cac_loss, cac_loss_backward, class_centroids_fused, class_centroids_fused_backward),
so the operators call every backend's fused op alike (csfr.ops.dispatch.fused). The backward of each is
its backward op: one kernel, reading the upstream gradients from device memory."""

from __future__ import annotations

import torch
from torch import Tensor

from csfr.ops.fake_shapes import FAKES
from csfr.ops.triton import cac_loss as cac
from csfr.ops.triton import centroids


@torch.library.custom_op("csfr_triton::cac_loss", mutates_args=())
def cac_loss(feats: Tensor, labels: Tensor, num_classes: int, delta_v: float, delta_d: float, w_intra: float,
             w_inter: float, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    return cac.cac_loss(feats, labels, num_classes, delta_v, delta_d, w_intra, w_inter, ignore_index)


@torch.library.custom_op("csfr_triton::cac_loss_backward", mutates_args=())
def cac_loss_backward(grad_loss: Tensor | None, grad_terms: Tensor | None, feats: Tensor, labels: Tensor,
                      state: Tensor, num_classes: int, w_intra: float, w_inter: float, ignore_index: int) -> Tensor:
    return cac.cac_loss_backward(grad_loss, grad_terms, feats, labels, state, num_classes, w_intra, w_inter,
                                 ignore_index)


@torch.library.custom_op("csfr_triton::class_centroids_fused", mutates_args=())
def class_centroids_fused(feats: Tensor, labels: Tensor, num_classes: int,
                          ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    return centroids.class_centroids_fused(feats, labels, num_classes, ignore_index)


@torch.library.custom_op("csfr_triton::class_centroids_fused_backward", mutates_args=())
def class_centroids_fused_backward(grad_mu: Tensor, feats: Tensor, labels: Tensor, state: Tensor, num_classes: int,
                                   ignore_index: int) -> Tensor:
    return centroids.class_centroids_fused_backward(grad_mu, feats, labels, state, num_classes, ignore_index)


for _name, _op in {"cac_loss": cac_loss, "cac_loss_backward": cac_loss_backward,
                   "class_centroids_fused": class_centroids_fused,
                   "class_centroids_fused_backward": class_centroids_fused_backward}.items():
    _op.register_fake(FAKES[_name])


def _save_cac(ctx, inputs, output):
    feats, labels, num_classes, _, _, w_intra, w_inter, ignore_index = inputs
    ctx.save_for_backward(feats, labels, output[2])
    ctx.args = num_classes, w_intra, w_inter, ignore_index
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: nothing to read


def _cac_backward(ctx, grad_loss, grad_terms, _):
    if grad_loss is None and grad_terms is None:
        return (None,) * 8
    feats, labels, state = ctx.saved_tensors
    return cac_loss_backward(grad_loss, grad_terms, feats, labels, state, *ctx.args), *(None,) * 7


def _save_centroids(ctx, inputs, output):
    feats, labels, num_classes, ignore_index = inputs
    ctx.save_for_backward(feats, labels, output[2])
    ctx.args = num_classes, ignore_index
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)


def _centroids_backward(ctx, grad_mu, *_):
    if grad_mu is None:
        return (None,) * 4
    feats, labels, state = ctx.saved_tensors
    return class_centroids_fused_backward(grad_mu, feats, labels, state, *ctx.args), None, None, None


cac_loss.register_autograd(_cac_backward, setup_context=_save_cac)
class_centroids_fused.register_autograd(_centroids_backward, setup_context=_save_centroids)
