"""Plants bugs in the CUDA kernels and the Triton fused ops, and checks that the tests catch each (docs/cuda.md).

Each mutant is one textual change to a file of kernels/ or csfr/ops/triton/. The committed tree is copied to a
work folder (with the built csfr/_C extension), the change is made there, and the tests of that code run,
stopping at the first failure: the emulated tests for a CUDA kernel (`TESTS`), the interpreter's for a
Triton one (`TRITON_TESTS`). A mutant the tests do not catch is a gap in the tests. Takes ~15 minutes
on 2 cores; not part of `make test`.

    python tools/kernel_mutants.py                 # all mutants
    python tools/kernel_mutants.py --list
    python tools/kernel_mutants.py "segment_sum counts a pixel twice"
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_ops_emulated.py", "tests/test_emulation.py", "tests/test_ops_label_dtypes.py"]
TRITON_TESTS = ["tests/test_ops_triton.py", "tests/test_ops_host_cost.py"]

# name -> (file, original text, planted text)
MUTANTS = {
    "segment_sum counts a pixel twice": (
        "kernels/segment_sum.cu", "      run_n += w;\n      continue;", "      run_n += 2 * w;\n      continue;"),
    "segment_sum drops the barrier after zeroing the table": (
        "kernels/segment_sum.cu", "dynamic_smem<A>()[j] = A(0);\n    __syncthreads();", "dynamic_smem<A>()[j] = A(0);\n"),
    "segment_sum drops the barrier before the global adds": (
        "kernels/segment_sum.cu", "  if (kShared) {\n    __syncthreads();\n    const A* tables",
        "  if (kShared) {\n    const A* tables"),
    "segment_sum tiles overlap (pixels of a tile counted by the next)": (
        "kernels/segment_sum.cu", "blockIdx.x) * kThreads * kItems + threadIdx.x;",
        "blockIdx.x) * kThreads * (kItems - 1) + threadIdx.x;"),
    "cac_pixel_pass drops the barrier before the distance reduction": (
        "kernels/cac_pixel_pass.cu", "  partial[grp][lane] = acc;\n  __syncthreads();", "  partial[grp][lane] = acc;\n"),
    "cac_pixel_pass reduces 15 of 16 channel groups": (
        "kernels/cac_pixel_pass.cu", "for (int j = 0; j < kGroups; ++j) sq += partial[j][lane];",
        "for (int j = 0; j < kGroups - 1; ++j) sq += partial[j][lane];"),
    "cac_pixel_pass hinge without the margin": (
        "kernels/cac_pixel_pass.cu", "r > delta_v ? r - delta_v : A(0);", "r > delta_v ? r : A(0);"),
    "warp_segment_add sums only 16 lanes": (
        "kernels/common.cuh", "for (int off = 16; off > 0; off >>= 1)", "for (int off = 8; off > 0; off >>= 1)"),
    "pixel_grad forgets the centroid term's sign": (
        "kernels/pixel_grad.cu", "v += ac * (to_acc(feats[row0 + c * N]) - mk[c]);",
        "v -= ac * (to_acc(feats[row0 + c * N]) - mk[c]);"),
    "blend channel-gate reduction drops the second warp": (
        "kernels/blend.cu", "A v = threadIdx.x < kThreads / 32 ? warp_totals[threadIdx.x] : A(0);",
        "A v = threadIdx.x < 1 ? warp_totals[threadIdx.x] : A(0);"),
    "blend channel-gate reduction without its barrier": (
        "kernels/blend.cu", "warp_totals[threadIdx.x / 32] = total;\n    __syncthreads();",
        "warp_totals[threadIdx.x / 32] = total;\n"),
    "deterministic reduction skips the last tile": (
        "kernels/segment_sum.cu", "for (int64_t t = 0; t < tiles; ++t) total += partial",
        "for (int64_t t = 0; t + 1 < tiles; ++t) total += partial"),
    "deterministic table sum skips warp 7": (
        "kernels/segment_sum.cu", "for (int w = 0; w < kWarps; ++w) total += tables[w * table + j];",
        "for (int w = 0; w < kWarps - 1; ++w) total += tables[w * table + j];"),
    # the fused cac_loss (kernels/cac_loss.cu)
    "class part halves the inter gradient": (
        "kernels/cac_loss.cu", "const A scale = A(-4) * has_inter", "const A scale = A(-2) * has_inter"),
    "class part skips the last class as a partner": (
        "kernels/cac_loss.cu", "for (int64_t c = warp; c < K; c += kClassWarps) {",
        "for (int64_t c = warp; c + 1 < K; c += kClassWarps) {"),
    "class part drops the barrier after forming mu_a": (
        "kernels/cac_loss.cu", "// every writer stores the same 1\n    __syncthreads();\n    row_intra",
        "// every writer stores the same 1\n    row_intra"),
    "class part's last block skips the last image": (
        "kernels/cac_loss.cu", "for (int64_t j = tid; j < L.B; j += kClassThreads) {",
        "for (int64_t j = tid; j + 1 < L.B; j += kClassThreads) {"),
    "fused pixel pass ignores the means' counts": (
        "kernels/cac_pixel_pass.cu", "const A ms = k >= 0 ? mean_scale(mu_counts, b * K + k) : A(1);",
        "const A ms = A(1);"),
    "fused gradient drops the through-the-mean term": (
        "kernels/cac_loss.cu", "+ through_mu * wk[c] + s_inter * gk[c];", "+ s_inter * gk[c];"),
    "fused class_centroids finishes an image before its last block": (
        "kernels/segment_sum.cu", "atomicAdd(tickets + b, 1u) == gridDim.x * gridDim.y - 1;",
        "atomicAdd(tickets + b, 1u) == 0;"),
    "fused class_centroids' gradient skips the count": (
        "kernels/pixel_grad.cu", "from_acc<T>(to_acc(g[c * sd]) * inv)", "from_acc<T>(to_acc(g[c * sd]))"),
    "fused segment_sum flags no bad label": (
        "kernels/segment_sum.cu", "if (bad_label && k < 0 && i < N && yb[i] != ignore) *bad_label = A(1);", ""),
    # the lanes turned to channels (kernels/common.cuh) and the chunked second pass of cac_pixel_pass
    "warp_channel_totals keeps the other half": (
        "kernels/common.cuh", "v[c] = (upper ? v[c + half] : v[c])", "v[c] = (upper ? v[c] : v[c + half])"),
    "cac_pixel_pass second pass skips every other round of channels": (
        "kernels/cac_pixel_pass.cu", "c0 += kGroups * kC)", "c0 += 2 * kGroups * kC)"),
    "segment_sum drops the last channel of a tile": (
        "kernels/segment_sum.cu", "        if (c < dn) add_sum(kl, c, t);", "        if (c < dn && c != kDT - 1) add_sum(kl, c, t);"),
    # the Triton fused ops (csfr/ops/triton/)
    "Triton class part halves the inter gradient": (
        "csfr/ops/triton/cac_loss.py", "scale = -4.0 * has_inter", "scale = -2.0 * has_inter"),
    "Triton intra factor misses 1 / n_a": (
        "csfr/ops/triton/cac_loss.py", "factor = has_intra * inv_n * inv_a", "factor = has_intra * inv_n"),
    "Triton finish counts one-class images for the inter term": (
        "csfr/ops/triton/cac_loss.py", "n_inter += tl.where(present >= 2.0", "n_inter += tl.where(present >= 1.0"),
    "Triton gradient drops the through-the-mean term": (
        "csfr/ops/triton/cac_loss.py", " - (ak * inv)[None, :] * wsum", ""),
    "Triton class part flags no non-finite sum": (
        "csfr/ops/triton/cac_loss.py", "tl.store(st_ptr + flags_off + _NON_FINITE, 1.0)", "pass"),
    "Triton means ignore the bad-label flag": (
        "csfr/ops/triton/centroids.py", 'inv = tl.where(tl.load(st_ptr + flag_off) != 0, float("nan"), inv)', "pass"),
    "Triton centroid gradient skips the count": (
        "csfr/ops/triton/centroids.py", "(grad * inv[None, :])", "(grad)"),
    "Triton segment_sum flags no bad label": (
        "csfr/ops/triton/segment.py", "    if FLAG:\n        _flag_bad_labels(flag_ptr, pix, y, N, K, ignore_index)\n",
        "    if FLAG:\n        pass\n"),
    "Triton pixel pass reads the sums as means": (
        "csfr/ops/triton/segment.py", "other=0) * scale\n        sq +=", "other=0)\n        sq +="),
}


def _copy_tree(dest: Path) -> None:
    """The committed tree plus the built extension, so the copy imports without a rebuild."""
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for built in glob.glob(str(ROOT / "csfr" / "_C*.so")):
        shutil.copy(built, dest / "csfr")


def run(names: list[str], work: Path) -> dict[str, str | None]:
    """Plants each mutant in turn; returns name -> first failing test (None: not caught)."""
    _copy_tree(work)
    results = {}
    for name in names:
        rel, old, new = MUTANTS[name]
        path = work / rel
        original = path.read_text()
        if original.count(old) != 1:
            raise SystemExit(f"kernel_mutants: {name!r}: the text to change is not found once in {rel}")
        path.write_text(original.replace(old, new))
        try:
            tests = TRITON_TESTS if rel.startswith("csfr/ops/triton/") else TESTS
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                  cwd=work, env={**os.environ, "PYTHONPATH": str(work)}, capture_output=True,
                                  text=True, check=False)
        finally:
            path.write_text(original)
        failed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        results[name] = failed[0] if failed else None
        print(f"{'caught' if failed else 'NOT CAUGHT'}: {name}" + (f"  <- {failed[0]}" if failed else ""), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mutants", nargs="*", help="names of the mutants to plant (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutants' names and exit")
    parser.add_argument("--work-dir", type=Path, help="where to copy the tree (default: a temporary folder)")
    args = parser.parse_args()
    if args.list:
        print("\n".join(MUTANTS))
        return
    unknown = [m for m in args.mutants if m not in MUTANTS]
    if unknown:
        parser.error(f"unknown mutant(s) {unknown}; see --list")
    with tempfile.TemporaryDirectory(prefix="csfr-kernel-mutants-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = run(args.mutants or list(MUTANTS), work)
    missed = [name for name, test in results.items() if test is None]
    print(f"{len(results) - len(missed)} of {len(results)} mutants caught")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
