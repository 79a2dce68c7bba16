"""Timing, peak-memory measurement and per-kernel time, shared by the benchmarks and the memory tests."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def throughput_ms(fn: Callable[[], object], device: torch.device, calls: int, repeat: int = 3) -> float:
    """Milliseconds per call of fn() when `calls` run back to back with one synchronisation at the end
    (median over `repeat` such batches): what a training loop that does not wait for each call sees. Beside
    `median_ms` (one call, synchronised), the gap is the host's cost that the device's work hides."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3 / calls)
    return statistics.median(times)


def top_kernels(fn: Callable[[], object], device: torch.device, runs: int = 5,
                top: int = 4, host: bool = False) -> tuple[list[dict], float]:
    """Where fn()'s time goes, by torch.profiler over `runs` calls after one warm-up: the `top` most
    expensive GPU kernels on a CUDA device (operators on the CPU), each with its self time and call
    count per call of fn (name, ms, calls), and the self time of all of them per call. On a GPU, what
    the wall time has beyond that total is the device waiting for the host; `host` lists the host's
    side instead (operators and CUDA runtime calls by self CPU time), where a call is bound by it."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"
    kernels = gpu and not host
    fn()
    _sync(device)
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if gpu else [])]) as prof:
        for _ in range(runs):
            fn()
        _sync(device)
    rows = []
    for event in prof.key_averages():
        if event.device_type != (DeviceType.CUDA if kernels else DeviceType.CPU):
            continue  # an operator's device time is its kernels', listed on their own
        us = event.self_device_time_total if kernels else event.self_cpu_time_total
        if us > 0:
            rows.append({"name": event.key, "ms": us / 1e3 / runs, "calls": event.count / runs})
    return sorted(rows, key=lambda row: -row["ms"])[:top], sum(row["ms"] for row in rows)


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


@functools.cache
def _return_freed_memory_to_os() -> None:
    """Makes glibc unmap large freed blocks at once. Its default adaptive mmap threshold grows
    after the first big free, so later buffers reuse memory that is already resident and the
    peak-RSS measure would miss them."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "mallopt"):
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: fixed, so never adapted upwards
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak memory fn() needs beyond what is allocated before it runs (outputs included).

    CUDA: the caching allocator's peak. CPU: the process's peak resident set, reset through
    /proc/self/clear_refs (Linux only; None elsewhere). Call fn once before, so lazy
    initialisation and compilation are not counted.
    """
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    _return_freed_memory_to_os()
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM to the current resident set
    except OSError:
        return None
    base = _proc_status("VmRSS")
    fn()
    return max(0, _proc_status("VmHWM") - base)


def device_description(device: torch.device) -> str:
    """The machine in words: GPU name, or CPU model, core count and torch's thread count."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
