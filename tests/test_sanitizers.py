"""The emulated CUDA kernels and the C++ CPU kernels under AddressSanitizer and UndefinedBehaviorSanitizer.

Test-only builds of the same sources (csfr.ops.emulation.build(sanitized=True)) are loaded into a
child process that has the ASan runtime preloaded, and the operator grids of tests/test_ops_emulated.py
and tests/test_ops_backends.py run there: an out-of-bounds index in a tail tile, or undefined
behaviour, aborts the child and fails this test with the sanitizer's report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from csfr.ops import emulation

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(emulation.why_unavailable() is not None, reason="CUDA emulation unavailable"),
    pytest.mark.skipif(emulation.asan_runtime() is None, reason="no AddressSanitizer runtime (libasan) found"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD of the ASan runtime: Linux only"),
]


@pytest.fixture(scope="module")
def sanitized_env():
    paths = emulation.build(sanitized=True)
    probe = emulation.compile_emulated("csfr_probe", [ROOT / "tests" / "native" / "emulation_probe.cpp"], sanitized=True)
    env = {**emulation.sanitizer_env(), "OMP_NUM_THREADS": "2",
           "CSFR_EMULATION_LIBRARY": paths["emulated"], "CSFR_EXTENSION_LIBRARY": paths["cpu"]}
    return env, probe


# Every kernel and every tail/edge case, in fewer dtype x gate combinations than the full grids (a
# sanitized run is several times slower): the emulated operator grid, uniform and mixed warps, tail
# tiles, fp16/bf16/fp64 and other ignore values; the CPU backend's grids below D = 512.
SUBSET = ("test_cac_and_centroids or test_single_and_mixed or tail_tile or test_every_dtype or test_other_ignore"
          " or (test_cac_loss_matches_reference and not 512) or test_all_ops_match"
          " or (test_gated_blend_matches_reference and cpu) or test_non_contiguous")


def _sanitizer_report(stderr: str) -> str:
    """The sanitizer's own report (it precedes Python's abort traceback), else the end of stderr."""
    starts = [i for i in (stderr.find("ERROR: AddressSanitizer"), stderr.find("runtime error:")) if i >= 0]
    return stderr[min(starts):][:6000] if starts else stderr[-6000:]


def _run(env, args, timeout=900):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_operator_grids_run_clean_under_sanitizers(sanitized_env):
    env, _ = sanitized_env
    # -s: a sanitizer report goes to fd 2 just before the abort; pytest's capture would swallow it
    proc = _run(env, ["-m", "pytest", "-q", "-x", "-s", "-p", "no:cacheprovider",
                      "tests/test_ops_emulated.py", "tests/test_ops_backends.py", "-k", SUBSET])
    report = proc.stdout[-4000:] + _sanitizer_report(proc.stderr)
    assert proc.returncode == 0, report
    assert "passed" in proc.stdout and " failed" not in proc.stdout, report


def test_sanitizer_catches_an_out_of_bounds_write(sanitized_env):
    """The control: the same set-up does see a kernel that writes one element past its buffer."""
    env, probe = sanitized_env
    code = f"import torch; torch.ops.load_library({probe!r}); torch.ops.csfr_probe.fault('oob_write')"
    proc = _run(env, ["-c", code], timeout=300)
    assert proc.returncode != 0
    assert "AddressSanitizer" in proc.stderr and "oob_write_kernel" in proc.stderr, proc.stderr[-3000:]
