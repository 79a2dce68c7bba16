"""The Triton kernels compile for real GPUs (sm_80, sm_90) without a GPU, within shared-memory limits.

The interpreter forgives what the real compiler rejects, so tools/triton_compile.py runs the real
compiler (in a subprocess: this session's Triton runs interpreted). The default run compiles a
representative subset (per kernel variant its largest tile, fp32 for sm_80 and bf16 for sm_90);
the `slow` test, run only when asked for (`pytest -m slow`), compiles every autotune configuration
x dtype x variant for both architectures.
Compiled kernels land in Triton's cache (~/.triton/cache), so reruns are quick.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def _compile(tmp_path, *flags):
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "triton_compile.py"), "--json", str(out), *flags],
                          env=env, capture_output=True, text=True, timeout=3000, check=False)
    if not out.exists():
        pytest.fail(f"triton_compile.py produced no results:\n{proc.stderr[-3000:]}")
    return proc, json.loads(out.read_text())


def _check(proc, rows):
    failed = [r for r in rows if r["error"]]
    assert proc.returncode == 0 and not failed, "\n".join(f"{r['kernel']} {r['constexprs']} {r['dtype']} "
                                                          f"{r['arch']}: {r['error']}" for r in failed)
    assert all(r["shared"] <= r["limit"] for r in rows)
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"segment_sum", "cac_pixel_pass", "pixel_grad", "class_sums", "cac_class_part", "cac_finish",
                       "cac_grad", "centroid_means", "centroid_grad", "blend_forward", "blend_backward"}
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}


def test_representative_configurations_compile(tmp_path):
    _check(*_compile(tmp_path))


@pytest.mark.slow
def test_every_configuration_compiles(tmp_path, request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("1488 compiles (about 9 minutes with a warm cache, more cold, on 2 cores): run with `pytest -m slow`")
    proc, rows = _compile(tmp_path, "--all")
    _check(proc, rows)
    assert {r["dtype"] for r in rows} == {"fp32", "fp16", "bf16", "fp64"}


def test_a_kernel_the_compiler_rejects_is_reported(tmp_path):
    """The tool reports a compile error (here a shape mismatch) instead of passing it over."""
    code = (
        "import sys; sys.path.insert(0, 'tools')\n"
        "import triton, triton.language as tl, triton_compile\n"
        "@triton.jit\n"
        "def bad(x_ptr, BLOCK: tl.constexpr):\n"
        "    tl.store(x_ptr + tl.arange(0, BLOCK), tl.zeros([BLOCK, 2], tl.float32))\n"
        "print(triton_compile.compile_one(bad, {'x_ptr': '*fp32', 'BLOCK': 'constexpr'}, {'BLOCK': 16}, 4, 90))\n")
    script = tmp_path / "bad_kernel.py"  # triton.jit reads the kernel's source file
    script.write_text(code.replace("'tools'", repr(str(ROOT / "tools"))))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert "'shared': None, 'error': " in proc.stdout, proc.stderr[-2000:]
