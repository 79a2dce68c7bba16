"""tests/native/kernel_driver.cu, the program `make gpu-check` runs under compute-sanitizer, runs here: compiled by
the host compiler against the CPU emulation of the CUDA execution model (csrc/emulation), it calls every
launcher of the real kernels/ sources and must find every output equal to its float64 host reference.
So a GPU session never spends its time on a driver whose own checks are wrong."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMULATION = ROOT / "csrc" / "emulation"
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


@pytest.mark.skipif(CXX is None or not (EMULATION / "emulation.h").is_file(),
                    reason="needs a C++ compiler and the CUDA emulation (csrc/emulation)")
def test_kernel_driver_passes_under_the_emulation(tmp_path):
    exe = tmp_path / "kernel_driver"
    kernels = sorted(str(p) for p in (ROOT / "kernels").glob("*.cu"))
    cmd = [CXX, "-std=c++20", "-O1", "-Wno-unknown-pragmas", "-fno-strict-aliasing", f"-I{EMULATION}",
           f"-I{ROOT / 'kernels'}", "-DCSFR_EMULATION=1", "-x", "c++", str(ROOT / "tests" / "native" / "kernel_driver.cu"),
           *kernels, "-x", "none", str(EMULATION / "runtime.cpp"), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert build.returncode == 0, f"the kernel driver does not compile against the emulation:\n{build.stderr}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, check=False)
    lines = run.stdout.splitlines()
    assert run.returncode == 0, f"kernel driver failed under the emulation:\n{run.stdout}{run.stderr}"
    assert lines[-1] == "kernel_driver: 0 failure(s)"
    cases = [line for line in lines if line.startswith("ok ")]
    assert len(cases) == 6 * 4  # six shapes, four dtypes
    assert {line.rsplit(" ", 1)[1] for line in cases} == {"float32", "float16", "bfloat16", "float64"}
