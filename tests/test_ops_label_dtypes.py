"""Labels of every integer dtype on every backend: the int64 labels' answer, or the same refusal.

uint8, int8, int16, int32 and int64 labels give the reference's centroids, counts, CAC terms and
gradients; a label that is negative or >= K and not ignore_index is refused by the shared check before
any kernel runs, also where the dtype cannot hold ignore_index (an int8 -1 is not 255, whatever the
wrap-around says). Refusals are tested on CPU tensors only: on a GPU the check is a device-side
assertion, which leaves the CUDA context unusable; its message is tested on the CPU stand-in of
tests/test_ops_syncs.py.
"""

import pytest
import torch
from opcases import assert_close, run_cac

import csfr
from csfr.ops import cac, centroids, checks

K = 4
LABEL_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
BACKENDS = ["torch", "cpu", "cuda_emulated", "triton", pytest.param("cuda", marks=pytest.mark.cuda)]


def _device(backend: str) -> str:
    if csfr.ops.backends()[backend] != "available":
        pytest.skip(f"backend {backend} unavailable here: {csfr.ops.backends()[backend]}")
    return "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) else "cpu"


def _cpu_only(backend: str) -> None:
    if _device(backend) != "cpu":
        pytest.skip("a refusal on a GPU is a device-side assertion")


def _fits(value: int, dtype: torch.dtype) -> bool:
    info = torch.iinfo(dtype)
    return info.min <= value <= info.max


def _all_ops(feats, labels, backend, ignore_index=255):
    """Each label-taking operator; with pytest.raises, checks all of them."""
    yield lambda: csfr.ops.cac_loss(feats, labels, K, ignore_index=ignore_index, backend=backend)
    yield lambda: csfr.ops.cac_terms(feats, labels, K, ignore_index=ignore_index, backend=backend)
    yield lambda: csfr.ops.class_centroids(feats, labels, K, ignore_index, backend=backend)


def _centroids(feats, labels, backend, ignore_index):
    """class_centroids' mu, counts and d(sum mu)/d(feats)."""
    f = feats.detach().requires_grad_(True)
    mu, n = csfr.ops.class_centroids(f, labels, K, ignore_index, backend=backend)
    mu.sum().backward()
    return mu, n, f.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LABEL_DTYPES, ids=str)
@pytest.mark.parametrize("ignore_index", [255, -1])
def test_every_label_dtype_gives_the_int64_answer(backend, dtype, ignore_index):
    """Random labels with ~20 % ignore pixels where the dtype holds ignore_index (none where it does
    not: an ignore_index the dtype cannot hold is no error while no label needs it)."""
    dev = _device(backend)
    gen = torch.Generator().manual_seed(0)
    b, d, h, w = 2, 5, 7, 9
    feats = torch.randn(b, d, h, w, generator=gen).to(dev)
    labels = torch.randint(0, K, (b, h, w), generator=gen)
    if _fits(ignore_index, dtype):
        labels[torch.rand(b, h, w, generator=gen) < 0.2] = ignore_index
    labels = labels.to(dev)
    typed = labels.to(dtype)
    assert torch.equal(typed.long(), labels)

    upstream = torch.tensor([0.7, 1.3], device=dev)
    terms, grad = run_cac(feats, typed, K, backend, upstream, ignore_index)
    ref_terms, ref_grad = run_cac(feats, labels, K, "torch", upstream, ignore_index)
    assert_close(terms, ref_terms, h * w + d + K, "cac terms")
    assert_close(grad, ref_grad, h * w + d + K, "cac gradient")

    mu, n, grad = _centroids(feats, typed, backend, ignore_index)
    ref_mu, ref_n, ref_grad = _centroids(feats, labels, "torch", ignore_index)
    assert torch.equal(n, ref_n)
    assert_close(mu, ref_mu, h * w, "centroids")
    assert_close(grad, ref_grad, 1, "centroid gradient")


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_minus_one_is_not_taken_for_ignore_index_255(backend):
    """The issue's example: 255 wraps to -1 in int8, and the -1 once passed the check as ignore_index;
    the CPU kernel then counted every pixel after it as class 0."""
    _cpu_only(backend)
    labels = torch.tensor([[[1, 2, -1, 1, 2, 2]]], dtype=torch.int8)
    if backend == "cuda_emulated":  # the CUDA code path: the kernel's device-side check
        with pytest.raises(RuntimeError, match="class_centroids: a label value is outside"):
            csfr.ops.class_centroids(torch.ones(1, 1, 1, 6), labels, 3, backend=backend)
    else:
        with pytest.raises(ValueError) as error:
            csfr.ops.class_centroids(torch.ones(1, 1, 1, 6), labels, 3, backend=backend)
        assert str(error.value) == ("class_centroids: label value -1 at index (0, 0, 2) is outside [0, 3) and is "
                                    "not ignore_index=255 (labels are torch.int8, which cannot hold 255)")
    _, counts = csfr.ops.class_centroids(torch.ones(1, 1, 1, 6), labels, 3, ignore_index=-1, backend=backend)
    assert counts.tolist() == [[0, 2, 3]]


# (label dtype, bad value, ignore_index) for every value the dtype holds
REFUSED = [pytest.param(dtype, value, ignore_index, id=f"{str(dtype)[6:]}-{value}-ignore{ignore_index}")
           for dtype in LABEL_DTYPES
           for value, ignore_index in [(-1, 255), (-100, 255), (K, 255), (100, 255), (254, 255), (255, -1), (-2, -1)]
           if _fits(value, dtype)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, value, ignore_index", REFUSED)
def test_bad_label_is_refused_the_same_way(monkeypatch, backend, dtype, value, ignore_index):
    """One ValueError line naming the value, its index and the dtype (and an ignore_index the dtype
    cannot hold), on every backend, before any kernel runs."""
    _cpu_only(backend)
    monkeypatch.setattr(cac, "fused", lambda name, op: pytest.fail("a kernel ran"))
    monkeypatch.setattr(centroids, "fused", lambda name, op: pytest.fail("a kernel ran"))
    feats, labels = torch.randn(2, 3, 6, 5), torch.randint(0, K, (2, 6, 5), dtype=dtype)
    labels[1, 3, 2] = value
    hint = "" if _fits(ignore_index, dtype) else f", which cannot hold {ignore_index}"
    for op, call in zip(("cac_loss", "cac_loss", "class_centroids"), _all_ops(feats, labels, backend, ignore_index)):
        if backend == "cuda_emulated":
            break  # the CUDA code path checks in its kernels: test_cuda_code_path_asserts_bad_labels
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == (f"{op}: label value {value} at index (1, 3, 2) is outside [0, {K}) and is not "
                                    f"ignore_index={ignore_index} (labels are {dtype}{hint})")


@pytest.mark.parametrize("dtype", LABEL_DTYPES, ids=str)
def test_device_path_refuses_bad_labels(monkeypatch, dtype):
    """On device tensors the same check is a device-side assertion, with the dtype in its message."""
    monkeypatch.setattr(checks, "host_checks", lambda t: False)
    feats, labels = torch.randn(2, 3, 6, 5), torch.randint(0, K, (2, 6, 5), dtype=dtype)
    csfr.ops.class_centroids(feats, labels, K, backend="torch")
    labels[1, 3, 2] = 200 if dtype == torch.uint8 else -1
    hint = "" if _fits(255, dtype) else ", which cannot hold 255"
    with pytest.raises(RuntimeError, match=rf"class_centroids: a label value is outside \[0, {K}\) and is not "
                                           rf"ignore_index=255 \(labels are {dtype}{hint};"):
        csfr.ops.class_centroids(feats, labels, K, backend="torch")  # the reference's check


@pytest.mark.parametrize("dtype", LABEL_DTYPES, ids=str)
@pytest.mark.parametrize("ignore_index", [255, -1])
def test_cuda_code_path_asserts_bad_labels(dtype, ignore_index):
    """The fused cac_loss flags a label outside [0, K) that is not ignore_index in its segment_sum, in the
    labels' own dtype (an int8 -1 is not 255), and stops in a device-side assertion; a clean batch passes."""
    _device("cuda_emulated")
    feats, labels = torch.randn(2, 3, 6, 5), torch.randint(0, K, (2, 6, 5), dtype=dtype)
    if _fits(ignore_index, dtype):
        labels[0, 0, 0] = ignore_index
    assert torch.isfinite(csfr.ops.cac_loss(feats, labels, K, ignore_index=ignore_index, backend="cuda_emulated"))
    labels[1, 3, 2] = next(v for v in (-1, 255, K) if _fits(v, dtype) and v != ignore_index)
    for op, call in zip(("cac_loss", "cac_loss", "class_centroids"),
                        _all_ops(feats, labels, "cuda_emulated", ignore_index)):
        with pytest.raises(RuntimeError, match=rf"{op}: a label value is outside \[0, num_classes\)"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64], ids=str)
def test_other_integer_dtypes_are_refused(backend, dtype):
    _cpu_only(backend)
    feats, labels = torch.randn(2, 3, 6, 5), torch.randint(0, K, (2, 6, 5)).to(dtype)
    for call in _all_ops(feats, labels, backend):
        with pytest.raises(TypeError, match=f"labels must be uint8, int8, int16, int32 or int64, got {dtype}"):
            call()


def test_cpu_kernels_refuse_a_negative_label_anywhere():
    """The CPU kernels' own label compaction (behind the shared check) once stopped at the first
    negative label without an error, leaving every later pixel in class 0."""
    if csfr.ops.backends()["cpu"] != "available":
        pytest.skip("needs the C++ extension")
    feats, labels = torch.ones(1, 1, 6), torch.tensor([[1, 2, -1, 1, 2, 2]])
    with pytest.raises(RuntimeError, match=r"label value -1 is outside \[0, 3\) and is not ignore_index=255"):
        torch.ops.csfr.segment_sum(feats, labels, 3, 255)
    _, counts = torch.ops.csfr.segment_sum(feats, labels, 3, -1)
    assert counts.tolist() == [[0.0, 2.0, 3.0]]
