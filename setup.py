"""Builds the csfr._C extension: C++ CPU kernels always, CUDA kernels when possible.

CUDA is built when the installed torch has CUDA and nvcc is found; CSFR_BUILD_CUDA=0/1
forces the choice either way. A build that cannot compile stops with one line saying why.
"""

import glob
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _fail(msg: str) -> None:
    sys.stderr.write(f"csfr build error: {msg}\n")
    sys.exit(1)


try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    _fail("torch is not installed; install it first (e.g. pip install torch==2.13.0), "
          "then pip install --no-build-isolation .")


def _want_cuda() -> bool:
    forced = os.environ.get("CSFR_BUILD_CUDA")
    has_nvcc = cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None
    if forced == "1":
        if torch.version.cuda is None:
            _fail(f"CSFR_BUILD_CUDA=1 but the installed torch {torch.__version__} has no CUDA")
        if not has_nvcc:
            _fail("CSFR_BUILD_CUDA=1 but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
        return True
    if forced == "0":
        return False
    return torch.version.cuda is not None and has_nvcc


def _rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


def _openmp_flags():
    if sys.platform == "darwin":
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


def extensions():
    cpu_sources = _rel(glob.glob(os.path.join(HERE, "csrc", "*.cpp")))
    if not cpu_sources:
        _fail("no C++ sources found in csrc/")
    omp_c, omp_l = _openmp_flags()
    cxx = ["-O3", "-std=c++20", "-fno-trapping-math", *omp_c]  # no FP traps: lets loops vectorise
    if _want_cuda():
        sources = cpu_sources + _rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cpp")))
        sources += _rel(glob.glob(os.path.join(HERE, "kernels", "*.cu")))
        nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo",
                f"-I{os.path.join(HERE, 'kernels')}"]
        return [cpp_extension.CUDAExtension(
            "csfr._C", sources, define_macros=[("CSFR_WITH_CUDA", "1")],
            include_dirs=[os.path.join(HERE, "kernels")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=omp_l)]
    return [cpp_extension.CppExtension(
        "csfr._C", cpu_sources, extra_compile_args={"cxx": cxx}, extra_link_args=omp_l)]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
