"""The CUDA emulation itself (csrc/emulation/): the execution model the kernels rely on, and the
synchronisation errors it must report, checked with the probe kernels of tests/native/emulation_probe.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from csfr.ops import emulation

pytestmark = pytest.mark.skipif(emulation.why_unavailable() is not None,
                                reason=f"CUDA emulation unavailable: {emulation.why_unavailable()}")

PROBE = Path(__file__).with_name("native") / "emulation_probe.cpp"


@pytest.fixture(scope="module")
def probe():
    torch.ops.load_library(emulation.compile_emulated("csfr_probe", [PROBE]))
    return torch.ops.csfr_probe


@pytest.mark.parametrize("block", [(64, 1, 1), (8, 8, 1), (32, 4, 1), (4, 4, 4), (16, 2, 2)], ids=str)
def test_warps_are_numbered_as_cuda_numbers_them(probe, block):
    """Warp w holds threads 32w .. 32w + 31 of the linear id x + y*bx + z*bx*by, whatever the block's shape."""
    out = probe.lane0_of_warp(*block)
    linear = torch.arange(out.numel())
    assert torch.equal(out, linear // 32 * 32)


def test_partial_warp_with_a_full_mask_is_an_error(probe):
    """In a 48-thread block warp 1 has lanes 0..15 only: a full mask names lanes that do not exist."""
    with pytest.raises(RuntimeError, match="names lane 16, which does not exist"):
        probe.lane0_of_warp(48, 1, 1)


@pytest.mark.parametrize("lane_mask", [1, 2, 16, 31])
def test_shfl_xor_exchanges_within_the_warp(probe, lane_mask):
    v = torch.arange(128, dtype=torch.float32) * 1.5
    idx = torch.arange(128)
    assert torch.equal(probe.shfl_xor(v, lane_mask), v[(idx // 32) * 32 + (idx % 32 ^ lane_mask)])


def test_votes(probe):
    pred = torch.zeros(64, dtype=torch.int32)
    pred[[3, 7, 40]] = 1
    pred[32:] = 1  # warp 1: all set
    out = probe.votes(pred)
    assert torch.equal(out[:32, 0], torch.full((32,), (1 << 3) | (1 << 7)))
    assert torch.equal(out[32:, 0], torch.full((32,), (1 << 32) - 1))
    assert torch.equal(out[:, 1], torch.tensor([0] * 32 + [1] * 32))
    assert torch.equal(out[:, 2], torch.ones(64, dtype=torch.long))


@pytest.mark.parametrize("seed", range(4))
def test_syncwarp_orders_shared_memory_within_the_warp(probe, seed):
    t = torch.arange(64)
    neighbour = (t // 32) * 32 + (t + 1) % 32
    assert torch.equal(probe.syncwarp_neighbours(seed), (1000 * (seed + 1) + neighbour).int())


def test_static_and_dynamic_shared_memory_with_barriers(probe):
    v = torch.randn(4 * 128)
    blocks = v.reshape(4, 128)
    torch.testing.assert_close(probe.block_sums(v), (blocks + blocks.flip(1))[:, :64].sum(1))


def test_atomic_order_follows_the_seeded_schedule(probe):
    v = torch.rand(32 * 64) * torch.logspace(-4, 4, 32 * 64)
    results = []
    for seed in (3, 4, 3):
        probe.set_seed(seed)
        results.append(probe.atomic_sum(v))
    assert torch.equal(results[0], results[2]) and not torch.equal(results[0], results[1])
    torch.testing.assert_close(results[0], v.double().sum().float().reshape(1), rtol=1e-5, atol=0)


@pytest.mark.parametrize(("kind", "message"), [
    ("divergent_syncthreads", "divergent __syncthreads"),
    ("exit_before_barrier", r"not reached by thread \(3,0,0\)"),
    ("shfl_exited_lane", "names lane 5, which has exited"),
    ("divergent_collective", "divergent warp collective"),
    ("divergent_syncwarp", "divergent warp collective.*__syncwarp|__syncwarp.*divergent warp collective"),
    ("smem_without_optin", "invalid argument"),
])
def test_synccheck_errors_are_reported(probe, kind, message):
    with pytest.raises(RuntimeError, match=message):
        probe.fault(kind)
