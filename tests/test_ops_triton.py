"""The Triton kernels against the reference on CPU tensors, under the Triton interpreter.

tests/conftest.py turns the interpreter on when there is no GPU. It runs kernels in numpy, so shapes are small; they still cover tiles that hold
one class (the register-reduction path), mixed tiles (the per-element atomics), partial tiles,
ignore labels, absent classes and all-ignore images.
"""

import itertools

import pytest
import torch
from opcases import GATES, compare_all_ops, compare_gated_blend, compare_label_kernels, make_labels, run_cac

import csfr

pytest.importorskip("triton", reason="triton is not installed (it is a [dev] dependency on Linux x86_64)")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="with a GPU, Triton runs compiled: tests/test_ops_gpu.py covers it")


SHAPES = [(1, 1, 1, 1, 1), (2, 3, 5, 7, 2), (2, 20, 9, 7, 19), (3, 17, 6, 11, 150)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", ["ignore", "one_class", "all_ignore_image", "all_ignore_batch"])
def test_cac_loss_and_centroids_fp32(shape, case):
    compare_all_ops("triton", "cpu", torch.float32, shape, case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision(dtype):
    compare_all_ops("triton", "cpu", dtype, (2, 24, 9, 11, 19))


def test_uniform_and_mixed_tiles():
    """Blocky labels: most 16-pixel tiles hold one class, the boundaries mix two or more."""
    feats = torch.randn(2, 12, 16, 24)
    labels = torch.randint(0, 4, (2, 2, 3)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    labels[0, :, :5] = 255
    upstream = torch.tensor([0.7, 1.3])
    terms, grad = run_cac(feats, labels, 4, "triton", upstream)
    ref_terms, ref_grad = run_cac(feats, labels, 4, "torch", upstream)
    torch.testing.assert_close(terms, ref_terms)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_float64_gradcheck():
    feats = torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    labels = make_labels(2, 4, 3, 4, "cpu", "ignore")
    assert torch.autograd.gradcheck(lambda f: csfr.ops.cac_terms(f, labels, 4, 0.2, 1.0, backend="triton"),
                                     (feats,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gate", list(GATES))
def test_gated_blend(dtype, gate):
    compare_gated_blend("triton", "cpu", dtype, gate)


def test_auto_does_not_pick_triton_for_cpu_tensors():
    from csfr.ops.dispatch import resolve

    assert resolve("auto", torch.device("cpu")) in ("cpu", "torch")


def test_autotune_bucket_is_the_power_of_two_at_or_above():
    from csfr.ops.triton.tuning import bucket

    assert [bucket(n) for n in (0, 1, 2, 3, 4, 5, 97 * 97, 2**20, 2**20 + 1)] == \
        [1, 1, 2, 4, 4, 8, 16384, 2**20, 2**21]
    assert len({bucket(n) for n in range(1, 100_000)}) == 18  # 100k sizes, 18 tuning sweeps


def test_sizes_in_one_bucket_share_one_tuning_entry(monkeypatch):
    """With two configurations to choose from, images of 40, 50 and 64 pixels are tuned once, 65 again."""
    import triton

    from csfr.ops.triton import segment

    kernel = segment._segment_sum_kernel
    monkeypatch.setattr(kernel, "configs", [triton.Config({"BLOCK_N": 16, "BLOCK_D": 16}, num_warps=1),
                                            triton.Config({"BLOCK_N": 32, "BLOCK_D": 16}, num_warps=1)])
    monkeypatch.setattr(kernel, "cache", {})
    sweeps = []
    monkeypatch.setattr(kernel, "_do_bench", lambda call, quantiles: sweeps.append(call()) or [1.0, 1.0, 1.0])
    for n in (40, 50, 64, 65):
        feats, labels = torch.randn(1, 3, n), torch.randint(0, 4, (1, n))
        sums, _ = segment.segment_sum(feats, labels, 4, 255)
        torch.testing.assert_close(sums, csfr.ops.class_centroids(feats, labels, 4, backend="torch")[0]
                                   * torch.bincount(labels[0], minlength=4)[None, :, None])
    assert len(kernel.cache) == 2 and len(sweeps) == 4  # two buckets, each sweeping two configurations


def test_csfr_triton_config_pins_one_configuration(monkeypatch):
    """CSFR_TRITON_CONFIG=i keeps the i-th (block, warps) pair only, modulo the list; unset, all of them."""
    from csfr.ops.triton import tuning

    monkeypatch.setattr(tuning, "interpreted", lambda: False)
    blocks = [{"BLOCK_N": 32}, {"BLOCK_N": 64}]
    monkeypatch.delenv("CSFR_TRITON_CONFIG", raising=False)
    every = [(c.kwargs["BLOCK_N"], c.num_warps) for c in tuning.configs(blocks, {"BLOCK_N": 16})]
    assert every == [(32, 4), (32, 8), (64, 4), (64, 8)]
    for value, want in (("1", (32, 8)), ("2", (64, 4)), ("5", (32, 8)), ("", None)):
        monkeypatch.setenv("CSFR_TRITON_CONFIG", value)
        got = [(c.kwargs["BLOCK_N"], c.num_warps) for c in tuning.configs(blocks, {"BLOCK_N": 16})]
        assert got == (every if want is None else [want])
    monkeypatch.setenv("CSFR_TRITON_CONFIG", "fast")
    with pytest.raises(ValueError, match="CSFR_TRITON_CONFIG must be a configuration index"):
        tuning.configs(blocks, {"BLOCK_N": 16})


CAC_PARTS = ("sums", "wsum", "counts", "hinge", "wcount", "flags", "ticket", "coef", "a", "g_inter", "row_intra",
             "row_inter", "present", "scale", "total")  # kernels/fused_state.h's CacState, in order


@pytest.mark.parametrize("case", ["ignore", "one_class", "all_ignore_image"])
def test_fused_state_holds_what_the_cpu_op_holds(case):
    """Triton's fused cac_loss fills kernels/fused_state.h's layout as the C++ op does, part by part: its
    backward reads the state, and a part misplaced or unfilled would show in no forward value."""
    from csfr.ops.dispatch import _library
    from csfr.ops.layout import CacState

    b, d, h, w, k = 3, 7, 5, 6, 6
    # float64, so that the parts compare to rounding (wsum sums terms that nearly cancel); post-ReLU-like
    feats = torch.rand(b, d, h * w, dtype=torch.float64) + 4
    labels = make_labels(b, h, w, k, "cpu", case).reshape(b, -1).long()
    args = (feats, labels, k, 0.1, 1.0, 0.3, 0.7, 255)
    states = {name: _library(name).cac_loss(*args)[2] for name in ("cpu", "triton")}
    layout = CacState(b, d, h * w, k)
    for part, end in itertools.pairwise(CAC_PARTS):
        piece = {name: st[getattr(layout, part):getattr(layout, end)] for name, st in states.items()}
        torch.testing.assert_close(piece["triton"], piece["cpu"], rtol=1e-9, atol=1e-9, msg=lambda m, p=part: f"{p}: {m}")


def test_a_bad_label_makes_the_fused_ops_nan():
    """On a GPU the Triton ops cannot raise without reading back: a label outside [0, K) that is not ignored
    makes the loss, the terms and the means NaN (segment_sum flags it). The ops are called directly here,
    past the operators' host checks."""
    from csfr.ops.dispatch import _library

    lib = _library("triton")
    feats, labels = torch.randn(2, 4, 10), torch.randint(0, 3, (2, 10))
    loss, terms, _ = lib.cac_loss(feats, labels, 3, 0.1, 1.0, 1.0, 1.0, 255)
    mu, _, _ = lib.class_centroids_fused(feats, labels, 3, 255)
    assert loss.isfinite() and terms.isfinite().all() and mu.isfinite().all()
    labels[1, 4] = 3
    loss, terms, _ = lib.cac_loss(feats, labels, 3, 0.1, 1.0, 1.0, 1.0, 255)
    mu, _, _ = lib.class_centroids_fused(feats, labels, 3, 255)
    assert loss.isnan() and terms.isnan().all() and mu.isnan().all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy on inf
def test_a_non_finite_class_sum_is_flagged():
    """The class part flags a non-finite class sum in the state, which makes the terms NaN: on a GPU NaN need
    not reach them by itself (max(NaN, 0) is 0 in PTX), so the flag is checked here, not only the terms."""
    from csfr.ops.dispatch import _library
    from csfr.ops.layout import FLAG_NON_FINITE, CacState

    feats, labels = torch.randn(2, 4, 10), torch.randint(0, 3, (2, 10))
    flag = CacState(2, 4, 10, 3).flags + FLAG_NON_FINITE
    assert _library("triton").cac_loss(feats, labels, 3, 0.1, 1.0, 1.0, 1.0, 255)[2][flag] == 0
    feats[1, 2, 6] = float("inf")
    loss, _, state = _library("triton").cac_loss(feats, labels, 3, 0.1, 1.0, 1.0, 1.0, 255)
    assert state[flag] == 1 and loss.isnan()


@pytest.mark.parametrize("deterministic_mode", [False, True], ids=["atomics", "deterministic"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 2), (2, 20, 9, 7, 19)], ids=lambda s: "x".join(map(str, s)))
def test_label_kernels_match_the_contract(shape, deterministic_mode):
    """The Triton label kernels called directly (the kernel contract): pixel_grad is in no Triton operator."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic_mode)
    try:
        compare_label_kernels("triton", torch.float32, shape, "ignore")
    finally:
        torch.use_deterministic_algorithms(previous)
