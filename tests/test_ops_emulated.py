"""The CUDA kernels of kernels/, executed on the CPU by the emulation (backend `cuda_emulated`),
against csfr.ops.reference: forward and backward of every operator, tail tiles, single- and
mixed-class tiles, K = 1 / 19 / 150, ignore labels, absent classes, all-ignore images, every dtype
and gate shape. docs/cuda.md lists the kernel bugs planted to check that these tests catch them.
"""

from __future__ import annotations

import pytest
import torch
from opcases import (
    CASES,
    GATES,
    assert_close,
    block_labels,
    compare_all_ops,
    compare_gated_blend,
    compare_label_kernels,
)

import csfr
from csfr.ops import emulation

BACKEND = "cuda_emulated"
pytestmark = pytest.mark.skipif(emulation.why_unavailable() is not None,
                                reason=f"CUDA emulation unavailable: {emulation.why_unavailable()}")

# (B, D, h, w, K). Kernel tiles: segment_sum 2048 pixels x 16 channels (8 deterministic), cac_pixel_pass
# 32 pixels x 16 channel groups (its second pass: rounds of 16 warps x 8 channels), pixel_grad 256 pixels x
# 8 channels, blend 256 pixels.
SHAPES = [
    (1, 1, 1, 1, 1),        # K = 1, one pixel
    (2, 3, 5, 7, 2),        # D < every channel tile
    (2, 19, 17, 19, 19),    # D not a multiple of 8 or 16, N of 323 (tail of a 32- and 256-pixel tile)
    (3, 9, 47, 45, 3),      # N = 2115: a second, 67-pixel segment_sum tile; B = 3
    (2, 24, 9, 11, 150),    # K = 150: most classes absent
    (1, 140, 6, 7, 5),      # D > 128: a second round of cac_pixel_pass's 8-channel chunks, ending in a tail
]


def _id(shape):
    return "x".join(map(str, shape))


@pytest.mark.parametrize("shape", SHAPES, ids=_id)
@pytest.mark.parametrize("case", CASES)
def test_cac_and_centroids_match_reference(shape, case):
    compare_all_ops(BACKEND, "cpu", torch.float32, shape, case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(2, 19, 17, 19, 19), (2, 24, 9, 11, 150)], ids=_id)
def test_every_dtype_matches_reference(dtype, shape):
    compare_all_ops(BACKEND, "cpu", dtype, shape, "ignore")


@pytest.mark.parametrize("ignore_index", [-1, 0])
def test_other_ignore_index(ignore_index):
    compare_all_ops(BACKEND, "cpu", torch.float32, (2, 19, 17, 19, 19), "ignore", ignore_index=ignore_index)


@pytest.mark.parametrize("cell", [4, 64], ids=["mixed_warps", "uniform_warps"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_single_and_mixed_class_tiles(cell, dtype):
    gen = torch.Generator().manual_seed(1)
    b, d, h, w, k = 2, 10, 70, 40, 5
    feats = (torch.rand(b, d, h, w, generator=gen) * 2 + 1).to(dtype)  # post-ReLU-like: positive, offset
    # whole warps of one class (the register-run path of segment_sum, the uniform warps of
    # cac_pixel_pass) next to warps that straddle a boundary
    labels = block_labels(b, h, w, k, gen, cell=cell, redrawn=0)
    labels[:, 0, :5] = 255
    mu, n = csfr.ops.class_centroids(feats, labels, k, backend=BACKEND)
    ref_mu, ref_n = csfr.ops.reference.class_centroids(feats, labels, k)
    assert torch.equal(n, ref_n)
    assert_close(mu, ref_mu, h * w, "centroids")
    f = feats.detach().requires_grad_(True)
    loss = csfr.ops.cac_loss(f, labels, k, 0.2, 1.0, backend=BACKEND)
    loss.backward()
    f_ref = feats.detach().requires_grad_(True)
    ref_loss = csfr.ops.reference.cac_loss(f_ref, labels, k, 0.2, 1.0)
    ref_loss.backward()
    assert_close(loss, ref_loss, h * w + d + k, "cac loss")
    assert_close(f.grad, f_ref.grad, h * w + d + k, "cac gradient")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gate", list(GATES))
def test_gated_blend_matches_reference(dtype, gate):
    compare_gated_blend(BACKEND, "cpu", dtype, gate)


def test_gated_blend_tail_tile_and_long_rows():
    """N = 300 (a 256-pixel tile and a 44-pixel tail) and a per-channel gate reduced over 2 warps' worth."""
    for gate in ("pixel", "channel", "full"):
        compare_gated_blend(BACKEND, "cpu", torch.float32, gate, shape=(2, 5, 12, 25))


def test_float64_gradcheck():
    feats = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (2, 4, 3))
    labels[0, 0] = 255
    assert torch.autograd.gradcheck(lambda f: csfr.ops.cac_terms(f, labels, 4, 0.2, 1.0, backend=BACKEND), (feats,))
    x, s = (torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    g = torch.randn(2, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: csfr.ops.gated_blend(a, b, c, backend=BACKEND), (x, s, g))


def test_schedule_seed_changes_atomic_order_only_in_the_last_bits():
    """Float atomics are summed in the order the seeded schedule runs blocks and threads: another seed
    gives other last bits (as another run on a GPU would), the same seed the same bits."""
    gen = torch.Generator().manual_seed(2)
    feats = torch.rand(4, 16, 40, 40, generator=gen) * 100 + torch.rand(1, generator=gen) * 1e-3
    labels = torch.randint(0, 3, (4, 40, 40), generator=gen)
    sums = []
    for seed in (1, 2, 1):
        emulation.set_schedule_seed(seed)
        sums.append(torch.ops.csfr_emulated.segment_sum(feats.reshape(4, 16, -1), labels.reshape(4, -1), 3, 255)[0])
    emulation.set_schedule_seed(0)
    assert torch.equal(sums[0], sums[2])
    assert not torch.equal(sums[0], sums[1])
    assert_close(sums[0], sums[1], reduction=40 * 40)  # two summation orders of an image's pixels


def test_auto_never_picks_the_emulation(monkeypatch):
    from csfr.ops.dispatch import resolve

    monkeypatch.delenv("CSFR_BACKEND", raising=False)
    assert resolve("auto", torch.device("cpu")) == "cpu"
    assert resolve(BACKEND, torch.device("cpu")) == BACKEND
    assert csfr.ops.backends()[BACKEND] == "available"


@pytest.fixture(autouse=True)
def _default_schedule():
    yield
    emulation.set_schedule_seed(0)


@pytest.mark.parametrize("shape", [(3, 9, 47, 45, 3), (2, 19, 17, 19, 19), (2, 24, 9, 11, 150)], ids=_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deterministic_path_matches_reference(deterministic, shape, dtype):
    """The atomics-free reductions (per-warp tables, per-tile partials) compute the same operators."""
    compare_all_ops(BACKEND, "cpu", dtype, shape, "ignore")


def test_deterministic_mode_gives_identical_bits_under_any_schedule(deterministic):
    gen = torch.Generator().manual_seed(5)
    feats = torch.relu(torch.randn(2, 12, 47, 45, generator=gen) + 3)
    labels = torch.randint(0, 4, (2, 47, 45), generator=gen)

    def run(seed):
        emulation.set_schedule_seed(seed)
        f = feats.clone().requires_grad_(True)
        terms = csfr.ops.cac_terms(f, labels, 4, 0.1, 1.0, backend=BACKEND)
        terms.sum().backward()
        mu, _ = csfr.ops.class_centroids(feats, labels, 4, backend=BACKEND)
        return terms, f.grad, mu

    first, second = run(1), run(2)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    torch.use_deterministic_algorithms(False)  # the control: the atomic path's bits follow the schedule
    assert not all(torch.equal(a, b) for a, b in zip(run(1), run(2)))


@pytest.mark.parametrize("deterministic_mode", [False, True], ids=["atomics", "deterministic"])
@pytest.mark.parametrize("case", ["ignore", "blocky"])
@pytest.mark.parametrize("shape", [(2, 19, 17, 19, 19), (1, 140, 6, 7, 5), (2, 24, 9, 11, 150)], ids=_id)
def test_label_kernels_match_the_contract(shape, case, deterministic_mode):
    """The CUDA label kernels called directly: pixel_grad is no longer inside any CUDA operator (the fused ops
    have their own gradient kernels), so only this holds it to its contract."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic_mode)
    try:
        compare_label_kernels(BACKEND, torch.float32, shape, case)
    finally:
        torch.use_deterministic_algorithms(previous)
