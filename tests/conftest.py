"""Shared pytest fixtures and the `cuda` marker's skip rule.

Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors. Triton reads
TRITON_INTERPRET when it is imported, so it is set here, before any test imports it.
On a GPU the Triton kernels are pinned to their first configuration (CSFR_TRITON_CONFIG=0):
autotuning every new shape and dtype compiles and times each configuration (`pytest -m cuda`
got through a quarter of its tests in 4 minutes on 8 processes of an H200 so); the other
configurations and autotuning itself are checked in tests/test_ops_gpu.py, each in a process
of its own.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("CSFR_TRITON_CONFIG", "0")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def deterministic():
    """torch.use_deterministic_algorithms(True) for one test."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)
