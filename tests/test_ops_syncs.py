"""No host synchronisation from the operators on device tensors, and clear errors on the CPU.

On the CPU a test cannot observe a CUDA sync, so it forces the operators' device path
(`csfr.ops.checks.host_checks` -> False) on CPU tensors and records the aten ops they issue:
none may read data on the host (.item(), bool(), nonzero, a copy to the CPU). The GPU test
runs a training step with torch.cuda.set_sync_debug_mode("error").
"""

import pytest
import torch
from aten_trace import AtenTrace

import csfr
from csfr.ops import checks

K = 4


@pytest.fixture
def device_path(monkeypatch):
    """The operators take the path they take on a GPU (CPU tensors stand in for device tensors)."""
    monkeypatch.setattr(checks, "host_checks", lambda t: False)


def _every_op(feats, labels, backend):
    """Forward and backward of cac_loss, class_centroids and gated_blend."""
    f = feats.detach().requires_grad_(True)
    loss = csfr.ops.cac_loss(f, labels, K, backend=backend)
    mu, _ = csfr.ops.class_centroids(f, labels, K, backend=backend)
    z = csfr.ops.gated_blend(f, f.flip(1), f[:, :1], backend=backend)
    (loss + mu.sum() + z.sum()).backward()
    return loss


def _inputs():
    labels = torch.randint(0, K, (2, 6, 7))
    labels[0, 0] = 255
    return torch.randn(2, 5, 6, 7), labels


# fused backends (the torch reference is not the GPU hot path; its one_hot reads on the host on
# CPU tensors only); cuda_emulated is the CUDA code path, whose kernels check the labels; triton runs in its
# interpreter here
FUSED = ["cpu", "cuda_emulated", "triton"]


@pytest.mark.parametrize("backend", FUSED)
def test_device_path_reads_nothing_on_the_host(device_path, backend):
    if csfr.ops.backends()[backend] != "available":
        pytest.skip(csfr.ops.backends()[backend])
    trace = AtenTrace()
    with trace:
        _every_op(*_inputs(), backend)
    assert trace.host_reads() == []


def test_host_path_is_what_the_trace_sees():
    """Control: on CPU tensors the checks read on the host, and the trace sees it."""
    trace = AtenTrace()
    with trace:
        _every_op(*_inputs(), "cpu")
    assert trace.host_reads()


def test_device_path_label_error_is_a_device_assertion(device_path):
    feats, labels = _inputs()
    labels[1, 2, 3] = K + 3
    with pytest.raises(RuntimeError, match=rf"class_centroids: a label value is outside \[0, {K}\)"):
        csfr.ops.class_centroids(feats, labels, K, backend="torch")  # the composed forms' torch._assert_async


def test_cuda_code_path_checks_labels_in_its_kernels():
    """The fused ops of the CUDA code path flag a bad label in segment_sum and stop in a device-side
    assertion (the emulation raises it from the launch)."""
    if csfr.ops.backends()["cuda_emulated"] != "available":
        pytest.skip(csfr.ops.backends()["cuda_emulated"])
    feats, labels = _inputs()
    assert torch.isfinite(csfr.ops.cac_loss(feats, labels, K, backend="cuda_emulated"))
    labels[1, 2, 3] = K + 3
    with pytest.raises(RuntimeError, match=r"cac_loss: a label value is outside \[0, num_classes\)"):
        csfr.ops.cac_loss(feats, labels, K, backend="cuda_emulated")
    with pytest.raises(RuntimeError, match=r"class_centroids: a label value is outside \[0, num_classes\)"):
        csfr.ops.class_centroids(feats, labels, K, backend="cuda_emulated")


def test_device_path_non_finite_features_give_a_nan_loss(device_path):
    feats, labels = _inputs()
    feats[1, 0, 3, 3] = float("inf")
    labels[1, 3, 3] = 1
    assert torch.isnan(csfr.ops.cac_loss(feats, labels, K, backend="cpu"))


def test_trainer_checks_labels_on_the_cpu_before_the_device():
    """The training loop names a bad label value from the CPU batch, before moving it."""
    import inspect

    from csfr.engine.trainer import Trainer

    source = inspect.getsource(Trainer._step)
    assert source.index("check_label_values(batch[\"label\"]") < source.index("batch[\"label\"].to(")


@pytest.mark.cuda
def test_training_step_makes_no_host_sync_on_gpu():
    from csfr import configs
    from csfr.engine.builders import build_model

    config = configs.load("synthetic")
    model = build_model(config, 4).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(2, 3, 65, 65, device="cuda")
    labels = torch.randint(0, 4, (2, 65, 65), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses = model(images, labels)["losses"]
        sum(losses.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, Triton autotuning (which times kernels, so syncs)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
