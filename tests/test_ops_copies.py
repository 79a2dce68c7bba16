"""Channels-last or sliced features are copied at most once per call, and only when a kernel
reads them: the flat [B,D,N] copy made for the forward is reused by the backward."""

import pytest
import torch
from aten_trace import AtenTrace

import csfr

K = 4


def _layouts():
    base = torch.randn(2, 6, 8, 10)
    return {"contiguous": (base, 0), "channels_last": (base.contiguous(memory_format=torch.channels_last), 1),
            "sliced": (torch.randn(2, 6, 8, 20)[..., ::2], 1)}


def _copies(op, feats, labels):
    """Feature-sized copies made by op's forward and by its backward (autograd.grad, so no .grad)."""
    f = feats.detach().requires_grad_(True)
    with AtenTrace() as forward:
        out = op(f, labels)
    with AtenTrace() as backward:
        torch.autograd.grad(out.float().square().sum(), f)
    return forward.copies_of(f.numel()), backward.copies_of(f.numel())


OPS = {"cac_loss": lambda f, y: csfr.ops.cac_loss(f, y, K, backend="cpu"),
       "class_centroids": lambda f, y: csfr.ops.class_centroids(f, y, K, backend="cpu")[0]}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("layout", list(_layouts()))
def test_features_copied_at_most_once_and_never_in_backward(op, layout):
    feats, expected = _layouts()[layout]
    labels = torch.randint(0, K, (2, 8, 10))
    forward, backward = _copies(OPS[op], feats, labels)
    assert len(forward) == expected, forward
    assert backward == []
