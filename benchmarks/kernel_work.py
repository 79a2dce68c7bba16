"""Count the work of the CUDA label kernels under the emulation: warp collectives and atomics.

The emulation (backend cuda_emulated, docs/cuda.md) runs the CUDA kernels on the CPU and counts, per lane,
every warp collective (shuffle, vote, __syncwarp) and every atomic. These are counts, not times: what a
GPU spends on them depends on the GPU, and memory traffic is not counted at all. They show what a change
to a kernel's reductions does to its instruction mix where no GPU is at hand. The table is written into
the section of benchmarks/RESULTS.md named by --title.

    python -m benchmarks.kernel_work                       # the current kernels
    python -m benchmarks.kernel_work --title "..." --out F  # e.g. another commit's, for a comparison
"""

from __future__ import annotations

import argparse
import datetime
import subprocess

import torch

from benchmarks.bench_ops import IGNORE, bench_labels
from benchmarks.results_file import write_section
from csfr.ops import emulation

# (B, D, H, W, K): small enough for the emulation (seconds), D across several channel tiles
SHAPES = [(1, 64, 48, 48, 19), (1, 64, 48, 48, 150)]
LABELS = ("random", "blocky")


def _counts(run) -> tuple[int, int]:
    torch.ops.csfr_emulated.take_work_counts()  # what ran before
    run()
    collectives, atomics = torch.ops.csfr_emulated.take_work_counts()
    return collectives, atomics


def measure(shape: tuple, labels: str) -> dict[str, tuple[int, int]]:
    """{kernel: (warp collectives, atomics)} counted per lane, for segment_sum and cac_pixel_pass."""
    b, d, h, w, k = shape
    gen = torch.Generator().manual_seed(0)
    feats = (torch.rand(b, d, h * w, generator=gen) + 2).contiguous()
    y = bench_labels(b, h, w, k, labels, gen).reshape(b, -1).long()
    ops = torch.ops.csfr_emulated
    sums, counts = ops.segment_sum(feats, y, k, IGNORE)
    mu = (sums / counts.clamp_min(1)[..., None]).contiguous()
    return {"segment_sum": _counts(lambda: ops.segment_sum(feats, y, k, IGNORE)),
            "cac_pixel_pass": _counts(lambda: ops.cac_pixel_pass(feats, y, mu, 0.3, IGNORE))}


def table() -> str:
    """Per 1000 feature elements (pixels x channels): warp collectives as warp instructions (lane calls / 32)
    and atomics per lane."""
    rows = ["| kernel | B x D x H x W, K | labels | warp collectives / 1000 elements | atomics / 1000 elements |",
            "|---|---|---|---:|---:|"]
    for shape in SHAPES:
        b, d, h, w, k = shape
        elements = b * d * h * w / 1000
        for labels in LABELS:
            for kernel, (collectives, atomics) in measure(shape, labels).items():
                rows.append(f"| {kernel} | {b}x{d}x{h}x{w}, K={k} | {labels} | {collectives / 32 / elements:.1f} "
                            f"| {atomics / elements:.1f} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--title", default=None,
                        help="the section of the results file to write (default: 'CUDA kernel work under the "
                             "emulation, <commit>')")
    parser.add_argument("--out", default="benchmarks/RESULTS.md", help="results file (default: %(default)s)")
    parser.add_argument("--print-only", action="store_true", help="print the table, write nothing")
    args = parser.parse_args(argv)
    reason = emulation.why_unavailable()
    if reason is not None:
        raise SystemExit(f"kernel_work: the CUDA emulation is unavailable: {reason}")
    emulation.load()
    text = table()
    print(text)
    if args.print_only:
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    title = args.title or f"CUDA kernel work under the emulation, {commit or 'this tree'}"
    section = (f"## {title}\n\n{datetime.date.today()}; `python -m benchmarks.kernel_work`: counts, not times "
               "(docs/cuda.md, \"Kernel work\").\n\n" + text + "\n")
    write_section(args.out, title, section)


if __name__ == "__main__":
    main()
