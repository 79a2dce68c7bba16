"""The emulated CUDA kernels and the C++ CPU kernels under AddressSanitizer and UndefinedBehaviorSanitizer.

Test-only builds of the same sources (csfr.ops.emulation.build(sanitized=True)) are loaded into a
child process that has the ASan runtime preloaded, and the operator grids of tests/test_ops_emulated.py
and tests/test_ops_backends.py run there: an out-of-bounds index in a tail tile, or undefined
behaviour, aborts the child and fails this test with the sanitizer's report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from csfr.ops import emulation

ROOT = Path(__file__).resolve().parents[1]


def _asan_runtime() -> str | None:
    try:
        path = subprocess.run(["c++", "-print-file-name=libasan.so"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


pytestmark = [
    pytest.mark.skipif(emulation.why_unavailable() is not None, reason="CUDA emulation unavailable"),
    pytest.mark.skipif(_asan_runtime() is None, reason="no AddressSanitizer runtime (libasan) found"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD of the ASan runtime: Linux only"),
]


@pytest.fixture(scope="module")
def sanitized_env():
    env = {
        **os.environ,
        "LD_PRELOAD": _asan_runtime(),
        # python and torch keep memory until exit on purpose; torch's own allocator pairs trip the mismatch check
        "ASAN_OPTIONS": "detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "OMP_NUM_THREADS": "2",
    }
    # building loads the libraries, which needs the ASan runtime preloaded: build in a child too
    build = ("import json; from pathlib import Path; from csfr.ops import emulation as e; "
             "p = e.build(sanitized=True); "
             f"p['probe'] = e.compile_emulated('csfr_probe', [Path({str(ROOT / 'tests' / 'emulation_probe.cpp')!r})], "
             "sanitized=True); print(json.dumps(p))")
    proc = _run(env, ["-c", build])
    assert proc.returncode == 0, proc.stderr[-4000:]
    paths = json.loads(proc.stdout.strip().splitlines()[-1])
    env.update(CSFR_EMULATION_LIBRARY=paths["emulated"], CSFR_EXTENSION_LIBRARY=paths["cpu"])
    return env, paths["probe"]


# Every kernel and every tail/edge case, in fewer dtype x gate combinations than the full grids (a
# sanitized run is several times slower): the emulated operator grid, uniform and mixed warps, tail
# tiles, fp16/bf16/fp64 and other ignore values; the CPU backend's grids below D = 512.
SUBSET = ("test_cac_and_centroids or test_single_and_mixed or tail_tile or test_every_dtype or test_other_ignore"
          " or (test_cac_loss_matches_reference and not 512) or test_all_ops_match"
          " or (test_gated_blend_matches_reference and cpu) or test_non_contiguous")


def _run(env, args, timeout=900):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_operator_grids_run_clean_under_sanitizers(sanitized_env):
    env, _ = sanitized_env
    proc = _run(env, ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                      "tests/test_ops_emulated.py", "tests/test_ops_backends.py", "-k", SUBSET])
    report = proc.stdout[-4000:] + proc.stderr[-8000:]
    assert proc.returncode == 0, report
    assert "passed" in proc.stdout and " failed" not in proc.stdout, report


def test_sanitizer_catches_an_out_of_bounds_write(sanitized_env):
    """The control: the same set-up does see a kernel that writes one element past its buffer."""
    env, probe = sanitized_env
    code = f"import torch; torch.ops.load_library({probe!r}); torch.ops.csfr_probe.fault('oob_write')"
    proc = _run(env, ["-c", code], timeout=300)
    assert proc.returncode != 0
    assert "AddressSanitizer" in proc.stderr and "oob_write_kernel" in proc.stderr, proc.stderr[-3000:]
