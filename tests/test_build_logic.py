"""setup.py's decisions: whether to build CUDA, for which architectures, and the one-line stop when
torch is not importable (pip's build isolation). setup.py is imported, which builds nothing."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("csfr_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nvcc_major(setup_py):
    text = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 13.0, V13.0.88\n"
    assert setup_py.nvcc_major(text) == 13
    assert setup_py.nvcc_major("Cuda compilation tools, release 12.8, V12.8.61") == 12
    assert setup_py.nvcc_major("command not found") is None


@pytest.mark.parametrize("forced, torch_cuda, nvcc, expected", [
    (None, "13.0", 13, True),        # automatic: CUDA torch and a matching nvcc
    ("", "12.8", 12, True),
    ("1", "13.0", 13, True),
    (None, None, 13, False),         # CPU build of torch
    (None, "13.0", None, False),     # no nvcc
    (None, "13.0", 12, False),       # nvcc of another major version: torch would refuse it
    ("0", "13.0", 13, False),        # forced off
])
def test_want_cuda(setup_py, forced, torch_cuda, nvcc, expected):
    build, why = setup_py.want_cuda(forced, torch_cuda, nvcc)
    assert build is expected and why


@pytest.mark.parametrize("torch_cuda, nvcc, message", [
    (None, 13, "has no CUDA"),
    ("13.0", None, "nvcc was not found"),
    ("13.0", 12, "nvcc is CUDA 12 but torch was built with CUDA 13.0"),
])
def test_forced_cuda_that_cannot_build_is_an_error(setup_py, torch_cuda, nvcc, message):
    with pytest.raises(setup_py.BuildError, match=message):
        setup_py.want_cuda("1", torch_cuda, nvcc)


def test_bad_switch_value_is_an_error(setup_py):
    with pytest.raises(setup_py.BuildError, match="CSFR_BUILD_CUDA must be 0 or 1, got 'yes'"):
        setup_py.want_cuda("yes", "13.0", 13)


@pytest.mark.parametrize("env, gpus, expected", [
    (None, 0, "default"),   # GPU-less build machine: torch alone would fail
    ("", 0, "default"),
    (" ", 0, "default"),
    ("8.0", 0, None),       # the user's list wins
    ("9.0", 2, None),
    (None, 1, None),        # torch builds for the visible GPU
])
def test_cuda_arch_list(setup_py, env, gpus, expected):
    want = setup_py.DEFAULT_CUDA_ARCHS if expected == "default" else expected
    assert setup_py.cuda_arch_list(env, gpus) == want


def test_default_arch_list_is_one_torch_accepts(setup_py, monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", setup_py.DEFAULT_CUDA_ARCHS)
    flags = cpp_extension._get_cuda_arch_flags()
    assert {f for f in flags if "code=sm_" in f} == {f"-gencode=arch=compute_{a},code=sm_{a}" for a in (80, 86, 90)}
    assert "-gencode=arch=compute_90,code=compute_90" in flags  # PTX for newer GPUs


def _fake_torch(cuda: str | None, gpus: int, cuda_home: str | None):
    made = {}

    class Extension:
        def __init__(self, name, sources, **kwargs):
            made.update(name=name, sources=sources, kind=type(self).__name__, **kwargs)

    class CUDAExtension(Extension):
        pass

    class CppExtension(Extension):
        pass

    torch = types.SimpleNamespace(version=types.SimpleNamespace(cuda=cuda),
                                  cuda=types.SimpleNamespace(device_count=lambda: gpus))
    ext = types.SimpleNamespace(CUDA_HOME=cuda_home, CUDAExtension=CUDAExtension, CppExtension=CppExtension)
    return torch, ext, made


@pytest.fixture
def fake_cuda_home(tmp_path, monkeypatch):
    """A CUDA_HOME whose bin/nvcc reports release 13.0; PATH holds no other nvcc."""
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    for var in ("CSFR_BUILD_CUDA", "TORCH_CUDA_ARCH_LIST"):
        monkeypatch.delenv(var, raising=False)
    return str(tmp_path)


def test_gpu_less_cuda_build_gets_the_default_archs(setup_py, fake_cuda_home):
    torch, ext, made = _fake_torch("13.0", gpus=0, cuda_home=fake_cuda_home)
    setup_py.extensions(torch, ext)
    assert made["kind"] == "CUDAExtension"
    assert "kernels/segment_sum.cu" in made["sources"] and ("CSFR_WITH_CUDA", "1") in made["define_macros"]
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == setup_py.DEFAULT_CUDA_ARCHS


def test_visible_gpu_and_cpu_torch_keep_their_builds(setup_py, fake_cuda_home, monkeypatch):
    torch, ext, made = _fake_torch("13.0", gpus=1, cuda_home=fake_cuda_home)
    setup_py.extensions(torch, ext)
    assert made["kind"] == "CUDAExtension" and "TORCH_CUDA_ARCH_LIST" not in os.environ
    torch, ext, made = _fake_torch(None, gpus=0, cuda_home=fake_cuda_home)
    setup_py.extensions(torch, ext)
    assert made["kind"] == "CppExtension" and not any(s.endswith(".cu") for s in made["sources"])
    monkeypatch.setenv("CSFR_BUILD_CUDA", "1")
    with pytest.raises(setup_py.BuildError, match="has no CUDA"):
        setup_py.extensions(torch, ext)


def test_no_torch_stops_at_once_with_one_line():
    """What pip's build isolation sees: setup.py run as __main__ with torch not importable."""
    code = ("import sys, runpy; sys.modules['torch'] = None; "
            f"runpy.run_path({str(ROOT / 'setup.py')!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        ("csfr build error: torch is not importable here (pip's default build isolation hides the installed one); "
         "install torch first, then run: pip install --no-build-isolation .")]


def test_build_requirements_leave_torch_out():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert not any(r.split(">")[0].split("=")[0].strip() == "torch" for r in requires)


@pytest.mark.parametrize("cuda", [None, "13.0"])
def test_host_compiler_standard_is_torchs_own(setup_py, fake_cuda_home, cuda):
    """No -std in the C++ flags, so cpp_extension's choice for the installed torch applies: a forced
    C++20 build against torch 2.11 crashed on the GPU machine whenever a failed TORCH_CHECK printed a
    tensor's sizes."""
    torch, ext, made = _fake_torch(cuda, gpus=1, cuda_home=fake_cuda_home)
    setup_py.extensions(torch, ext)
    assert not [f for f in made["extra_compile_args"]["cxx"] if f.startswith("-std")]


@pytest.mark.parametrize("std", ["c++17", "c++20"])
def test_host_sources_compile_as_cpp17_and_cpp20(std):
    """What cpp_extension may pick: C++17 for older torch releases, C++20 for torch 2.13."""
    torch = pytest.importorskip("torch")
    from torch.utils import cpp_extension
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("needs a C++ compiler")
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    for src in (ROOT / "csrc" / "cpu_kernels.cpp", ROOT / "csrc" / "ops.cpp"):
        proc = subprocess.run([cxx, f"-std={std}", "-fsyntax-only", "-fopenmp", *includes, str(src)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{src.name} as {std} (torch {torch.__version__}):\n{proc.stderr[-3000:]}"
    # the CUDA emulation (csfr.ops.emulation) builds its runtime and the kernels with the same standard
    emulated = [ROOT / "csrc" / "emulation" / "runtime.cpp", *sorted((ROOT / "kernels").glob("*.cu"))]
    for src in emulated:
        proc = subprocess.run([cxx, f"-std={std}", "-fsyntax-only", "-x", "c++", "-DCSFR_EMULATION",
                               f"-I{ROOT / 'csrc' / 'emulation'}", f"-I{ROOT / 'kernels'}", str(src)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{src.name} (emulated) as {std}:\n{proc.stderr[-3000:]}"
