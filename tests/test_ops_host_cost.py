"""The host cost of the fused operators: operations dispatched per forward + backward.

On a GPU the fused cac_loss is bound by the host (docs/benchmarks.md: its kernels take a fifth of
its time at the Cityscapes shape; the rest is launching ~100 small dense operations on the class
centroids). Each operation dispatched is a kernel launch there, so their count, which the CPU
shows just as well, is what these tests hold down.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from csfr import ops

pytestmark = pytest.mark.skipif(ops.backends()["cpu"] != "available", reason="needs the C++ extension")


def _outermost_ops(fn) -> list[str]:
    """The aten operations fn() dispatches from Python or from a custom op, not those nested in others."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()
            if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]


def _inputs():
    torch.manual_seed(0)
    feats = (torch.rand(2, 8, 8, 8) + 5).requires_grad_(True)
    return feats, torch.randint(0, 5, (2, 8, 8))


# measured with torch 2.13: 131 and 30 (before: 190 for cac_loss, whose class part then ran in the
# backward, and 33 for class_centroids); a margin for other torch versions' decompositions
@pytest.mark.parametrize("op, limit", [("cac_loss", 150), ("class_centroids", 32)])
def test_fused_forward_backward_dispatches_few_operations(op, limit):
    feats, labels = _inputs()

    def run():
        _loss(op, feats, labels).backward()
    run()
    names = _outermost_ops(run)
    assert len(names) <= limit, f"{op} forward + backward dispatches {len(names)} operations (limit {limit})"


def _loss(op: str, feats, labels):
    if op == "cac_loss":
        return ops.cac_loss(feats, labels, 5, backend="cpu")
    return ops.class_centroids(feats, labels, 5, backend="cpu")[0].sum()


@pytest.mark.parametrize("op, node, limit", [
    # the class part is computed in the forward (the backward once recomputed the inter term: 85)
    ("cac_loss", "cac_loss_terms", 6),
    # 1 / max(n, 1) comes from the forward (the backward once rebuilt it from the counts: 6)
    ("class_centroids", "class_centroids", 2),
])
def test_backward_is_pixel_grad_and_a_few_operations(op, node, limit):
    """The custom op's backward adds at most `limit` operations to the pixel_grad kernel."""
    feats, labels = _inputs()
    loss = _loss(op, feats, labels)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss.backward()
    node = f"GeneratedBackwardFor_csfr_{node}_defaultBackward"  # the custom op's backward
    inside = [e.name for e in prof.events()
              if e.name.startswith("aten::") and e.cpu_parent is not None and e.cpu_parent.name == node]
    assert 0 < len(inside) <= limit, inside
