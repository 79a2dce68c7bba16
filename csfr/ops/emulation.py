"""The `cuda_emulated` test backend: the CUDA kernels of kernels/ run on the CPU.

The unchanged .cu sources are compiled by the host C++ compiler against the emulated CUDA
runtime in csrc/emulation/ (threads as fibers, barriers, warp collectives, synccheck errors)
and registered as the op library `csfr_emulated` on CPU tensors. It exists to test the CUDA
kernels without a GPU (docs/cuda.md, "Emulation"); `backend="auto"` never picks it. The build
is just-in-time (torch.utils.cpp_extension, cached under build/emulation/ in the source tree),
so it needs the source tree and a C++ compiler, not nvcc.

Environment:
    CSFR_EMULATION_LIBRARY: load this prebuilt library instead of building (the sanitizer run).
    CSFR_EMULATION_SEED: initial seed of the block and thread schedule (default 0).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
_KERNELS = ROOT / "kernels"
_RUNTIME = ROOT / "csrc" / "emulation"
_GLUE = ROOT / "csrc" / "cuda" / "ops_cuda.cpp"
_CPU_SOURCES = (ROOT / "csrc" / "ops.cpp", ROOT / "csrc" / "cpu_kernels.cpp")
_SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
_LOADED: list[str] = []


def why_unavailable() -> str | None:
    """None if the emulated backend can be built and loaded here, else the reason."""
    if os.environ.get("CSFR_EMULATION_LIBRARY"):
        return None
    if not (_KERNELS.is_dir() and _RUNTIME.is_dir() and _GLUE.is_file()):
        return f"the CUDA emulation compiles kernels/ from the source tree, which is not at {ROOT}"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler found to build the CUDA emulation"
    return None


def _wrappers(build_dir: Path, sources: list[Path]) -> list[str]:
    """The sources as C++ translation units: a .cu file is compiled through a generated .cpp that
    includes it (torch's builder would hand a .cu file to nvcc)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    units = []
    for src in sources:
        if src.suffix != ".cu":
            units.append(str(src))
            continue
        wrapper = build_dir / f"unit_{src.stem}.cpp"
        text = f'// generated: compiles {src.name} for the CPU emulation\n#include "{src}"\n'
        if not wrapper.is_file() or wrapper.read_text() != text:
            wrapper.write_text(text)
        units.append(str(wrapper))
    return units


def asan_runtime() -> str | None:
    """Path of the compiler's AddressSanitizer runtime (to LD_PRELOAD), or None."""
    try:
        out = subprocess.run([os.environ.get("CXX", "c++"), "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out if os.path.isabs(out) and os.path.exists(out) else None


def sanitizer_env() -> dict[str, str]:
    """Environment of a process that can load the sanitized libraries (the ASan runtime preloaded)."""
    runtime = asan_runtime()
    if runtime is None:
        raise RuntimeError("no AddressSanitizer runtime (libasan) found for the sanitized build")
    return {**os.environ, "LD_PRELOAD": runtime,
            # python and torch keep memory until exit on purpose; torch's allocator pairs trip the mismatch check
            "ASAN_OPTIONS": "detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=1",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def _build(name: str, sources: list[str], build_dir: Path, flags: list[str], ldflags: list[str],
           sanitized: bool) -> str:
    from torch.utils import cpp_extension

    build_dir.mkdir(parents=True, exist_ok=True)
    args = {"name": name, "sources": sources, "build_directory": str(build_dir), "extra_cflags": flags,
            "extra_ldflags": ldflags, "is_python_module": False, "verbose": False}
    if not sanitized:
        cpp_extension.load(**args)
    else:
        # torch's builder loads what it built, which needs the ASan runtime preloaded, and a sanitized
        # csfr library must not meet csfr._C in one process: build in a fresh interpreter
        code = "import json, sys; from torch.utils import cpp_extension; cpp_extension.load(**json.loads(sys.argv[1]))"
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], env=sanitizer_env(),
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"sanitized build of {name} failed:\n{proc.stderr[-4000:]}")
    return str(build_dir / f"{name}.so")


def _flags(sanitized: bool) -> tuple[list[str], list[str]]:
    # no -std: cpp_extension's, torch's own (setup.py says why)
    common = ["-Wno-unknown-pragmas", "-fno-strict-aliasing"]
    common += [*_SANITIZE, "-O1", "-g"] if sanitized else ["-O2"]
    return common, (list(_SANITIZE) if sanitized else [])


def compile_emulated(name: str, sources: list[Path], sanitized: bool = False) -> str:
    """Compiles CUDA sources (.cu, or C++ using the CUDA API) with the emulation into a shared library.

    Args:
        name: library name; the build is cached under build/emulation/<variant>/<name>/.
        sources: the files to compile with the emulated runtime (each its own translation unit).
        sanitized: compile with AddressSanitizer and UndefinedBehaviorSanitizer (errors abort);
            such a library only loads into a process started with `sanitizer_env()` (the build itself
            runs in such a child process).

    Returns:
        The path of the built library (load it with torch.ops.load_library).
    """
    reason = why_unavailable()
    if reason is not None:
        raise RuntimeError(f"cannot build the CUDA emulation: {reason}")
    build_dir = ROOT / "build" / "emulation" / ("sanitized" if sanitized else "plain") / name
    common, ldflags = _flags(sanitized)
    flags = [f"-I{_RUNTIME}", f"-I{_KERNELS}", "-DCSFR_EMULATION=1", *common]
    units = [str(_RUNTIME / "runtime.cpp"), *_wrappers(build_dir, [Path(p) for p in sources])]
    return _build(name, units, build_dir, flags, ldflags, sanitized)


def build(sanitized: bool = False) -> dict[str, str]:
    """Builds the emulated CUDA kernels of kernels/ with their glue (and, sanitized, the CPU kernels too).

    Args:
        sanitized: see compile_emulated.

    Returns:
        {"emulated": path} and, when sanitized, {"cpu": path} to the built shared libraries.
    """
    variant = "sanitized" if sanitized else "plain"
    paths = {"emulated": compile_emulated(f"csfr_emulated_{variant}", [_GLUE, *sorted(_KERNELS.glob("*.cu"))],
                                          sanitized)}
    if sanitized:
        common, ldflags = _flags(True)
        paths["cpu"] = _build("csfr_cpu_sanitized", [str(p) for p in _CPU_SOURCES],
                              ROOT / "build" / "emulation" / variant / "cpu",
                              [*common, "-fopenmp", "-fno-trapping-math"], [*ldflags, "-fopenmp"], True)
    return paths


def load() -> None:
    """Loads the csfr_emulated op library once (building it first unless CSFR_EMULATION_LIBRARY is set)."""
    if _LOADED:
        return
    path = os.environ.get("CSFR_EMULATION_LIBRARY") or build()["emulated"]
    torch.ops.load_library(path)
    _LOADED.append(path)


def set_schedule_seed(seed: int) -> None:
    """Seeds the order in which the emulation runs blocks and resumes threads (and restarts its stream)."""
    load()
    torch.ops.csfr_emulated.set_schedule_seed(seed)
