"""Under torch.use_deterministic_algorithms(True) the fused backends are bitwise reproducible.

A GPU runs programs in no fixed order, so float atomics sum in a different order each run.
The Triton interpreter runs them in grid order, so `shuffled_programs` makes it run them in a
seeded random order instead: two seeds then differ in the last bits on the atomics path (the
control below) and must agree bit for bit on the deterministic path. The CPU backend runs with
8 OpenMP threads, whose arrival order varies from run to run.
"""

import itertools
import random

import pytest
import torch
from opcases import compare_all_ops, compare_gated_blend, make_labels

import csfr

K = 5


@pytest.fixture
def shuffled_programs(monkeypatch):
    """shuffle(seed): from now on the Triton interpreter runs each grid in an order drawn from seed."""
    interpreter = pytest.importorskip("triton.runtime.interpreter")
    builder = interpreter.interpreter_builder
    set_dim, set_idx = builder.set_grid_dim, builder.set_grid_idx
    state = {"rng": random.Random(0)}

    def set_grid_dim(nx, ny, nz):
        set_dim(nx, ny, nz)
        state["order"] = list(itertools.product(range(nx), range(ny), range(nz)))
        state["rng"].shuffle(state["order"])
        state["next"] = 0

    def set_grid_idx(x, y, z):
        set_idx(*state["order"][state["next"]])
        state["next"] += 1

    monkeypatch.setattr(builder, "set_grid_dim", set_grid_dim)
    monkeypatch.setattr(builder, "set_grid_idx", set_grid_idx)
    return lambda seed: state.update(rng=random.Random(seed))


def _all_results(backend, h=12, w=16):
    """Every output and gradient of the three operators, on inputs whose sums depend on the order."""
    torch.manual_seed(0)
    b, d = 2, 24
    scale = torch.logspace(-3, 3, d).view(1, d, 1, 1)  # mixed magnitudes: the order of a sum shows
    feats = (torch.randn(b, d, h, w) * scale + 5).requires_grad_(True)
    labels = make_labels(b, h, w, K, "cpu", "ignore")
    terms = csfr.ops.cac_terms(feats, labels, K, 0.1, 1.0, backend=backend)
    mu, _ = csfr.ops.class_centroids(feats, labels, K, backend=backend)
    (terms.sum() + mu.square().sum()).backward()
    results = [terms, mu, feats.grad]
    x, s = torch.randn(b, d, h, w) * scale, torch.randn(b, d, h, w)
    for gate_shape in ((b, 1, h, w), (b, d, 1, 1)):  # per-pixel and per-channel gates are reduced
        g = torch.randn(gate_shape).requires_grad_(True)
        z = csfr.ops.gated_blend(x, s, g, backend=backend)
        (z * scale).sum().backward()
        results += [z, g.grad]
    return [r.detach() for r in results]


def _identical(first, second):
    return all(torch.equal(a, b) for a, b in zip(first, second))


def test_triton_deterministic_mode_is_bitwise_reproducible(deterministic, shuffled_programs):
    shuffled_programs(1)
    first = _all_results("triton")
    shuffled_programs(2)
    assert _identical(first, _all_results("triton"))


def test_triton_atomics_path_depends_on_program_order(shuffled_programs):
    """Control: without deterministic mode the shuffled order does change the bits."""
    shuffled_programs(1)
    first = _all_results("triton")
    shuffled_programs(2)
    assert not _identical(first, _all_results("triton"))


def test_cpu_is_bitwise_reproducible(deterministic):
    """8 threads on this 2-core machine: their arrival order varies; 48 x 64 pixels give every
    thread pixel tiles of its own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        first = _all_results("cpu", 48, 64)
        for _ in range(10):
            assert _identical(first, _all_results("cpu", 48, 64))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_deterministic_paths_match_the_reference(deterministic, dtype):
    compare_all_ops("triton", "cpu", dtype, (2, 20, 9, 7, 19))
    compare_all_ops("triton", "cpu", dtype, (2, 5, 6, 11, 150), case="all_ignore_image")
    for gate in ("pixel", "channel", "image"):
        compare_gated_blend("triton", "cpu", dtype, gate)
