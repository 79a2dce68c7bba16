"""The host cost of the fused operators: the device work one forward + backward enqueues.

On a GPU a small operation costs a launch (microseconds of host time) whatever its size, so an
operator made of many is bound by the host, not by the bytes it moves (docs/benchmarks.md). The
count shows just as well on the CPU: on the CUDA code path (`cuda_emulated`, the CUDA kernels under
the emulation) each kernel launch and memset is a torch.profiler event named as on a GPU, and every
other aten operation that computes something would be a launch of its own there. Triton's kernels run
in its interpreter here; the `triton_launches` fixture records each launch as one event.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from csfr import ops
from csfr.ops import checks

# runtime calls that enqueue device work (the emulation records them under the names a GPU profile uses)
TRITON_LAUNCH = "triton_launch"
LAUNCHES = ("cudaLaunchKernel", "cudaMemsetAsync", TRITON_LAUNCH)
CLEARS = ("aten::zero_", "aten::fill_")  # torch's clear of a buffer (one memset or fill kernel on a GPU)
# aten operations that launch nothing: allocation, views, and the no-op forms of .to / .contiguous
NO_WORK = {"empty", "empty_like", "empty_strided", "view", "reshape", "_reshape_alias", "as_strided", "unsqueeze",
           "squeeze", "transpose", "t", "permute", "expand", "detach", "detach_", "alias", "select", "slice", "unbind",
           "narrow", "to", "contiguous", "lift_fresh", "resolve_conj", "resolve_neg", "_unsafe_view"}


def _device_work(fn) -> list[str]:
    """What fn() would launch on a GPU: the (emulated) launches and memsets, and the aten operations that
    compute (those with no aten operation inside them, less allocations, views and no-ops)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.events()
    has_child = {id(e.cpu_parent) for e in events if e.cpu_parent is not None and e.name.startswith("aten::")}
    work = []
    for e in events:
        if _inside_triton_launch(e):  # the interpreter's own copies of a launch's arguments
            continue
        if e.name in LAUNCHES or e.name.startswith("aten::") and id(e) not in has_child and e.name[6:] not in NO_WORK:
            work.append(e.name)
    return work


def _inside_triton_launch(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == TRITON_LAUNCH:
            return True
        parent = parent.cpu_parent
    return False


@pytest.fixture
def triton_launches(monkeypatch):
    """Each launch of a Triton kernel (in the interpreter, on CPU tensors) becomes one profiler event."""
    if ops.backends()["triton"] != "available":
        pytest.skip(f"backend triton unavailable here: {ops.backends()['triton']}")
    interpreter = pytest.importorskip("triton.runtime.interpreter")
    run = interpreter.InterpretedFunction.run

    def recorded(self, *args, **kwargs):
        with torch.profiler.record_function(TRITON_LAUNCH):
            return run(self, *args, **kwargs)
    monkeypatch.setattr(interpreter.InterpretedFunction, "run", recorded)
    # as on a GPU: no host checks of the values around the op (on CPU tensors they read the labels)
    monkeypatch.setattr(checks, "fused_host_checks", lambda backend, labels: False)


def _inputs(k: int = 5):
    """The shape the issue counts on: features like post-ReLU ones (a large common mean)."""
    torch.manual_seed(0)
    feats = (torch.rand(2, 16, 12, 12) + 5).requires_grad_(True)
    return feats, torch.randint(0, k, (2, 12, 12)), torch.ones(())


def _backend(name: str) -> str:
    reason = ops.backends()[name]
    if reason != "available":
        pytest.skip(f"backend {name} unavailable here: {reason}")
    return name


def test_cac_loss_on_the_cuda_code_path_launches_five_times():
    """One clear, segment_sum, cac_pixel_pass and the class part forward; the gradient pass backward
    (the composed form dispatched 93 operations here)."""
    backend = _backend("cuda_emulated")
    feats, labels, seed = _inputs()

    def run():
        feats.grad = None  # the gradient is stored, not added to an earlier one
        ops.cac_loss(feats, labels, 5, backend=backend).backward(seed)
    run()
    work = _device_work(run)
    assert work == ["cudaMemsetAsync", *["cudaLaunchKernel"] * 4], work
    assert len(work) <= 6  # the bound


def test_cac_terms_take_the_same_launches():
    """cac_terms (both terms differentiable, as the loss module uses them) costs what cac_loss does."""
    backend = _backend("cuda_emulated")
    feats, labels, _ = _inputs()

    def run():
        feats.grad = None
        ops.cac_terms(feats, labels, 5, backend=backend).backward(torch.tensor([0.3, 0.7]))
    run()
    assert len(_device_work(run)) == 5, _device_work(run)


def test_class_centroids_on_the_cuda_code_path_launches_three_times():
    """One clear and segment_sum, whose last block of each image writes its means, forward; one gradient
    kernel backward, which reads the upstream gradient at its strides (the composed form: 26 operations)."""
    backend = _backend("cuda_emulated")
    feats, labels, _ = _inputs()
    grad_mu = torch.randn(2, 5, 16)

    def run():
        feats.grad = None
        ops.class_centroids(feats, labels, 5, backend=backend)[0].backward(grad_mu)
    run()
    assert _device_work(run) == ["cudaMemsetAsync", "cudaLaunchKernel", "cudaLaunchKernel"], _device_work(run)


@pytest.mark.parametrize("gate", [(2, 1, 12, 12), (2, 16, 1, 1), (2, 16, 12, 12)], ids=["pixel", "channel", "full"])
def test_gated_blend_on_the_cuda_code_path_launches_twice(gate):
    """One kernel forward, one backward, for every gate shape."""
    backend = _backend("cuda_emulated")
    x, s = (torch.randn(2, 16, 12, 12, requires_grad=True) for _ in range(2))
    g, dz = torch.randn(gate, requires_grad=True), torch.randn(2, 16, 12, 12)

    def run():
        x.grad = s.grad = g.grad = None
        ops.gated_blend(x, s, g, backend=backend).backward(dz)
    run()
    assert _device_work(run) == ["cudaLaunchKernel", "cudaLaunchKernel"], _device_work(run)


def test_cac_loss_on_triton_launches_six_times(triton_launches):
    """Triton's fused op: one clear, segment_sum, cac_pixel_pass, the class part and its one-program finish
    forward; the gradient kernel backward (the composed form dispatched 101 operations, 3 of them kernels)."""
    feats, labels, seed = _inputs()

    def run():
        feats.grad = None
        ops.cac_loss(feats, labels, 5, backend="triton").backward(seed)
    run()
    work = _device_work(run)
    assert work[0] in CLEARS and work[1:] == [TRITON_LAUNCH] * 5, work


def test_class_centroids_on_triton_launches_four_times(triton_launches):
    """One clear, segment_sum, the means kernel forward; one gradient kernel backward, at the gradient's strides
    (the composed form: 18 operations)."""
    feats, labels, _ = _inputs()
    grad_mu = torch.randn(2, 16, 5).transpose(1, 2)

    def run():
        feats.grad = None
        ops.class_centroids(feats, labels, 5, backend="triton")[0].backward(grad_mu)
    run()
    work = _device_work(run)
    assert work[0] in CLEARS and work[1:] == [TRITON_LAUNCH] * 3, work
