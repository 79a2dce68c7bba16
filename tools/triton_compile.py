"""Compile every Triton kernel of csfr.ops.triton for real GPUs, without a GPU (docs/triton.md).

    python tools/triton_compile.py              # representative subset (what the default test runs)
    python tools/triton_compile.py --all        # every autotune configuration x dtype x variant, sm_80 and sm_90
    python tools/triton_compile.py --all --dtypes fp32 bf16 --archs 90 --markdown   # docs/triton.md's table

The interpreter (TRITON_INTERPRET=1) forgives what the real compiler rejects; this runs the real
one: triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", arch, 32))
down to PTX and cubin (ptxas included) for each configuration the kernels are launched with, and
checks the static shared memory against the architecture's per-block limit. Exit status 1 on any
compile error or any configuration over the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler: must be decided before triton is imported

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from csfr.ops.triton import blend, cac_loss, centroids, segment
from csfr.ops.triton.tuning import WARPS

ARCHS = {80: 163 * 1024, 90: 227 * 1024}  # opt-in shared memory per block, bytes
DTYPES = {"fp32": tl.float32, "fp16": tl.float32, "bf16": tl.float32, "fp64": tl.float64}  # data -> acc
INTS = ("B", "D", "N", "K", "C", "ignore_index", "d_bucket", "n_bucket", "k_bucket", "c_bucket", "terms_stride",
        "s_b", "s_k", "s_d")  # and every state offset, *_off
FLOATS = ("delta_v", "delta_d", "w_intra", "w_inter")


def _signature(fn, pointers: dict[str, str], dtype: str) -> dict[str, str]:
    """Triton signature: pointers typed T (data), A (accumulation) or i64; ints i32; floats fp32."""
    acc = "fp64" if dtype == "fp64" else "fp32"
    types = {"T": dtype, "A": acc, "i64": "i64"}
    sig = {}
    for param in fn.params:
        name = param.name
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + types[pointers.get(name, "A")]
        elif name in INTS or name.endswith("_off"):
            sig[name] = "i32"
        elif name in FLOATS:
            sig[name] = "fp32"
        else:
            raise ValueError(f"{fn.__name__}: no type for argument {name!r}")
    return sig


def _every_tile(blocks: list[dict]) -> list[tuple[dict, int]]:
    """Every (block constexprs, num_warps) an autotuned kernel may run with, whatever CSFR_TRITON_CONFIG pins."""
    return [(dict(block), warps) for block in blocks for warps in WARPS]


def _specs():
    """(kernel name, jit fn, pointer types, variant constexprs, [(block constexprs, num_warps)])."""
    tile_configs = _every_tile(segment.TILE_BLOCKS)
    det_tile = [(dict(segment.DETERMINISTIC_TILE), 4)]
    data = {"feats_ptr": "T", "labels_ptr": "i64"}
    for flag in (False, True):  # True: the fused ops' launch, flagging bad labels
        yield "segment_sum", segment._segment_sum_kernel.fn, data, {"FLAG": flag}, tile_configs
    for from_sums in (False, True):  # True: the fused cac_loss's launch, means formed from the sums
        yield "cac_pixel_pass", segment._cac_pixel_pass_kernel.fn, data, \
            {"PER_PIXEL": False, "FROM_SUMS": from_sums}, tile_configs
        yield "cac_pixel_pass", segment._cac_pixel_pass_kernel.fn, data, \
            {"PER_PIXEL": True, "FROM_SUMS": from_sums}, det_tile
    grad = {**data, "out_ptr": "T"}
    for direct in (False, True):
        yield "pixel_grad", segment._pixel_grad_kernel.fn, grad, {"DIRECT": direct}, tile_configs
    # deterministic class sums: BLOCK_K = bucket(max(K, 16)); K <= 256 covers every preset (K <= 171)
    sums = [({"BLOCK_N": 32, "BLOCK_D": max(16, min(32, 8192 // k)), "BLOCK_K": k}, 4) for k in (16, 256)]
    plain = {"WEIGHTED": False, "FROM_SUMS": False, "COUNT": False, "FLAG": False}
    for src, variant in (("T", {"COUNT": True}), ("T", {"COUNT": True, "FLAG": True}), ("A", {}),
                         ("T", {"WEIGHTED": True}), ("T", {"WEIGHTED": True, "FROM_SUMS": True})):
        yield "class_sums", segment._class_sums_kernel, {"src_ptr": src, "labels_ptr": "i64"}, \
            {**plain, **variant}, sums
    # the fused cac_loss: the class part at the presets' K (19 and 150, D = 512), its finish, the gradient
    parts = [(dict(zip(("BLOCK_K", "BLOCK_D"), cac_loss.class_blocks(k, 512))), 4) for k in (19, 150)]
    yield "cac_class_part", cac_loss._class_part_kernel, {}, {}, parts
    yield "cac_finish", cac_loss._finish_kernel, {}, {}, [({"BLOCK_B": 16, "BLOCK_K": 64}, 4)]
    for has_loss, has_terms in ((True, False), (False, True), (True, True)):
        yield "cac_grad", cac_loss._grad_kernel.fn, grad, {"HAS_LOSS": has_loss, "HAS_TERMS": has_terms}, \
            tile_configs
    # the fused class_centroids: the means (in the features' dtype, int64 counts) and the gradient
    yield "centroid_means", centroids._means_kernel, {"mu_ptr": "T", "counts_ptr": "i64"}, {}, \
        [({"BLOCK_K": 16, "BLOCK_D": 64}, 4)]
    yield "centroid_grad", centroids._grad_kernel.fn, {"grad_ptr": "T", "labels_ptr": "i64", "out_ptr": "T"}, {}, \
        tile_configs
    blend_configs = _every_tile(blend.BLOCKS)
    xs = {"x_ptr": "T", "s_ptr": "T", "g_ptr": "T", "z_ptr": "T"}
    for mode in (blend.FULL, blend.PIXEL, blend.CHANNEL):
        yield "blend_forward", blend._blend_forward_kernel.fn, xs, {"MODE": mode}, blend_configs
        bwd = {**xs, "dz_ptr": "T", "dx_ptr": "T", "ds_ptr": "T", "dg_ptr": "T" if mode == blend.FULL else "A"}
        yield "blend_backward", blend._blend_backward_kernel.fn, bwd, {"MODE": mode, "PARTIALS": False}, \
            blend_configs
        if mode != blend.FULL:
            yield "blend_backward", blend._blend_backward_kernel.fn, bwd, {"MODE": mode, "PARTIALS": True}, \
                [(dict(blend.DETERMINISTIC_TILE), 4)]


def jobs(everything: bool, dtypes=tuple(DTYPES), archs=tuple(ARCHS)):
    """Every compile job: (kernel, fn, signature, constexprs, num_warps, dtype, arch). The subset takes,
    per kernel variant, its largest tile, fp32 on sm_80 and bf16 on sm_90 (fp64 only with --all)."""
    for name, fn, pointers, variant, tiles in _specs():
        if not everything:
            tiles = [max(tiles, key=lambda t: (_volume(t[0]), t[1]))]
        for blocks, warps in tiles:
            pairs = [(d, a) for d in dtypes for a in archs] if everything else [("fp32", 80), ("bf16", 90)]
            for dtype, arch in pairs:
                constexprs = {**variant, **blocks, "ACC": DTYPES[dtype]}
                yield name, fn, _signature(fn, pointers, dtype), constexprs, warps, dtype, arch


def _volume(blocks: dict) -> int:
    out = 1
    for v in blocks.values():
        out *= v
    return out


def compile_one(fn, signature, constexprs, warps, arch) -> dict:
    """{'shared': bytes, 'error': None} or {'shared': None, 'error': message}."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kernel = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                                    options={"num_warps": warps})
        assert kernel.asm.get("cubin"), "no cubin produced"
        return {"shared": int(kernel.metadata.shared), "error": None}
    except Exception as exc:  # noqa: BLE001 (every compiler failure is a finding to report, not a crash)
        return {"shared": None, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}


def run(everything: bool, progress=None, dtypes=tuple(DTYPES), archs=tuple(ARCHS)) -> list[dict]:
    """Compiles every job; `progress(row)` is called after each one."""
    rows = []
    for name, fn, signature, constexprs, warps, dtype, arch in jobs(everything, dtypes, archs):
        result = compile_one(fn, signature, constexprs, warps, arch)
        blocks = {k: v for k, v in constexprs.items() if k != "ACC"}
        over = result["shared"] is not None and result["shared"] > ARCHS[arch]
        rows.append({"kernel": name, "constexprs": blocks, "num_warps": warps, "dtype": dtype, "arch": f"sm_{arch}",
                     "shared": result["shared"], "limit": ARCHS[arch],
                     "error": result["error"] or (f"shared memory {result['shared']} B > {ARCHS[arch]} B" if over
                                                  else None)})
        if progress:
            progress(rows[-1])
    return rows


def markdown(rows: list[dict]) -> str:
    """One line per kernel variant and tile: shared memory (KiB) per dtype and architecture."""
    cols = sorted({(r["dtype"], int(r["arch"][3:])) for r in rows}, key=lambda c: (list(DTYPES).index(c[0]), c[1]))
    lines = ["| kernel | variant and tile | warps | " + " | ".join(f"{d} sm_{a}" for d, a in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    groups: dict[tuple, dict] = {}
    for r in rows:
        key = (r["kernel"], json.dumps(r["constexprs"]), r["num_warps"])
        groups.setdefault(key, {})[(r["dtype"], int(r["arch"][3:]))] = r
    for (kernel, blocks, warps), cells in groups.items():
        text = ", ".join(f"{k}={v}" for k, v in json.loads(blocks).items())
        values = []
        for col in cols:
            r = cells.get(col)
            values.append("" if r is None else ("error" if r["error"] else f"{r['shared'] / 1024:.1f}"))
        lines.append(f"| {kernel} | {text} | {warps} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true",
                        help="every autotune configuration, dtype (fp32/fp16/bf16/fp64) and variant, for sm_80 "
                             "and sm_90 (default: per kernel variant its largest tile, fp32 sm_80 and bf16 sm_90)")
    parser.add_argument("--json", metavar="FILE", help="also write every result as JSON to FILE")
    parser.add_argument("--markdown", action="store_true", help="print the shared-memory table (KiB) as Markdown")
    parser.add_argument("--progress", action="store_true", help="print one line per compiled configuration")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES),
                        help="with --all: only these feature dtypes (default: all four)")
    parser.add_argument("--archs", nargs="+", type=int, choices=list(ARCHS), default=list(ARCHS),
                        help="with --all: only these compute capabilities (default: 80 90)")
    args = parser.parse_args(argv)
    progress = (lambda r: print(json.dumps(r), file=sys.stderr, flush=True)) if args.progress else None
    rows = run(args.all, progress, tuple(args.dtypes), tuple(args.archs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.markdown:
        print(markdown(rows))
    failed = [r for r in rows if r["error"]]
    for r in failed:
        print(f"FAILED {r['kernel']} {r['constexprs']} warps={r['num_warps']} {r['dtype']} {r['arch']}: "
              f"{r['error']}", file=sys.stderr)
    print(f"{len(rows) - len(failed)}/{len(rows)} compiled within the shared-memory limits", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
