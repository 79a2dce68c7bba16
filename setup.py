"""Builds the csfr._C extension: C++ CPU kernels always, CUDA kernels when possible.

The extension is compiled against the torch it will run with, so it needs that torch importable
at build time: `pip install --no-build-isolation .` (pip's default build isolation hides it; this
script then stops with one line saying so, docs/cuda.md "Build").

CUDA is built when the installed torch has CUDA and an nvcc of the same major version is found;
CSFR_BUILD_CUDA=0/1 forces the choice either way. With no GPU visible and TORCH_CUDA_ARCH_LIST
unset, CUDA is built for DEFAULT_CUDA_ARCHS. A build that cannot compile stops with one line
saying why. The decisions are the pure functions below, unit-tested in tests/test_build_logic.py
(importing this file does not build anything).
"""

import glob
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Architectures built when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset: A100 (8.0),
# A10/RTX 30xx/40xx/L4 (8.6 code runs on 8.9), H100/H200 (9.0), and 9.0 PTX that the driver
# compiles for anything newer. Every nvcc that torch >= 2.4 supports (CUDA >= 11.8) knows them.
DEFAULT_CUDA_ARCHS = "8.0;8.6;9.0+PTX"

NO_TORCH = ("torch is not importable here (pip's default build isolation hides the installed one); "
            "install torch first, then run: pip install --no-build-isolation .")


class BuildError(Exception):
    """A reason the build cannot go on, as one line for the user."""


def nvcc_major(version_text: str) -> int | None:
    """The major CUDA version in `nvcc --version` output ("release 13.0, V13.0.88" -> 13)."""
    match = re.search(r"release (\d+)\.", version_text)
    return int(match.group(1)) if match else None


def want_cuda(forced: str | None, torch_cuda: str | None, nvcc: int | None) -> tuple[bool, str]:
    """Whether to build the CUDA kernels, and why.

    Args:
        forced: CSFR_BUILD_CUDA ("1", "0", or None/"" for automatic).
        torch_cuda: torch.version.cuda of the installed torch ("13.0"; None for a CPU build).
        nvcc: major version of the nvcc found (None when there is none).

    Returns:
        (build CUDA?, a short reason). Automatic mode builds CUDA only when it can succeed.

    Raises:
        BuildError: CSFR_BUILD_CUDA=1 but CUDA cannot be built, or CSFR_BUILD_CUDA has another value.
    """
    if forced not in (None, "", "0", "1"):
        raise BuildError(f"CSFR_BUILD_CUDA must be 0 or 1, got {forced!r}")
    if forced == "0":
        return False, "CSFR_BUILD_CUDA=0"
    problem = None
    if torch_cuda is None:
        problem = "the installed torch has no CUDA"
    elif nvcc is None:
        problem = "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    elif nvcc != int(torch_cuda.split(".")[0]):
        problem = f"nvcc is CUDA {nvcc} but torch was built with CUDA {torch_cuda}"
    if problem is None:
        return True, f"torch has CUDA {torch_cuda} and nvcc matches"
    if forced == "1":
        raise BuildError(f"CSFR_BUILD_CUDA=1 but {problem}")
    return False, problem


def cuda_arch_list(env_value: str | None, visible_gpus: int) -> str | None:
    """The TORCH_CUDA_ARCH_LIST to set, or None to keep torch's choice.

    torch builds for TORCH_CUDA_ARCH_LIST when it is set, else for the visible GPUs; with neither it
    fails (an IndexError in torch 2.x). GPU-less build machines are common, so they get
    DEFAULT_CUDA_ARCHS.
    """
    if env_value and env_value.strip():
        return None
    return None if visible_gpus > 0 else DEFAULT_CUDA_ARCHS


def _fail(msg: str) -> None:
    sys.stderr.write(f"csfr build error: {msg}\n")
    sys.exit(1)


def _find_nvcc(cuda_home: str | None) -> int | None:
    candidates = [os.path.join(cuda_home, "bin", "nvcc")] if cuda_home else []
    candidates.append(shutil.which("nvcc"))
    for path in filter(None, candidates):
        if os.access(path, os.X_OK):
            try:
                out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60,
                                     check=False).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            return nvcc_major(out)
    return None


def _rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


def _openmp_flags():
    if sys.platform == "darwin":
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


def extensions(torch, cpp_extension):
    """The csfr._C extension: C++ CPU sources, plus the CUDA glue and kernels when CUDA is built."""
    cpu_sources = _rel(glob.glob(os.path.join(HERE, "csrc", "*.cpp")))
    if not cpu_sources:
        raise BuildError("no C++ sources found in csrc/")
    omp_c, omp_l = _openmp_flags()
    # No -std: cpp_extension passes the standard that suits the installed torch; forcing another risks
    # inline code shared with libtorch differing between the two (against torch 2.11, a forced C++20
    # build crashed whenever a failed TORCH_CHECK printed a tensor's sizes). The sources compile as
    # C++17 and C++20. -fno-trapping-math (no FP traps) lets the loops vectorise.
    cxx = ["-O3", "-fno-trapping-math", *omp_c]
    cuda, why = want_cuda(os.environ.get("CSFR_BUILD_CUDA"), torch.version.cuda,
                          _find_nvcc(cpp_extension.CUDA_HOME))
    print(f"csfr: {'building' if cuda else 'not building'} the CUDA kernels ({why})")
    if not cuda:
        return [cpp_extension.CppExtension(
            "csfr._C", cpu_sources, extra_compile_args={"cxx": cxx}, extra_link_args=omp_l)]
    archs = cuda_arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST"), torch.cuda.device_count())
    if archs is not None:
        print(f"csfr: no GPU visible and TORCH_CUDA_ARCH_LIST unset; building for {archs}")
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    sources = cpu_sources + _rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cpp")))
    sources += _rel(glob.glob(os.path.join(HERE, "kernels", "*.cu")))
    nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", f"-I{os.path.join(HERE, 'kernels')}"]
    return [cpp_extension.CUDAExtension(
        "csfr._C", sources, define_macros=[("CSFR_WITH_CUDA", "1")],
        include_dirs=[os.path.join(HERE, "kernels")],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=omp_l)]


def main() -> None:
    from setuptools import setup

    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        _fail(NO_TORCH)
    try:
        ext_modules = extensions(torch, cpp_extension)
    except BuildError as e:
        _fail(str(e))
    setup(ext_modules=ext_modules,
          cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)})


if __name__ == "__main__":  # pip and setuptools run this file as __main__; tests import it
    main()
