"""Benchmark the csfr operators, forward + backward, against plain PyTorch in the same run.

For each operator and shape: the reference (csfr.ops.reference) in eager mode and under
torch.compile, an `index_add_` segmented sum for class_centroids, and every fused backend
available on the device. Reports median time, speed-up over eager and compiled reference,
achieved bandwidth against the bytes the operator must move (the model is in
docs/benchmarks.md), its share of the measured copy bandwidth, and peak extra memory.
The table is written into a section of benchmarks/RESULTS.md named after the machine.

    python -m benchmarks.bench_ops                 # CPU, the issue's two shapes and a tiny one (host cost)
    python -m benchmarks.bench_ops --device cuda   # on a GPU: adds cuda and triton
    python -m benchmarks.bench_ops --quick         # tiny shapes, a smoke test of the script (writes nothing)
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

import csfr
from benchmarks.results_file import write_section
from csfr.ops import reference
from csfr.profiling import device_description, median_ms, peak_extra_bytes, throughput_ms, top_kernels

IGNORE = 255
# --labels blocky: square regions of one class, this many pixels a side; 32 consecutive pixels of a
# row (one warp's loads) then cross two or three regions, as in a 1/8-scale street-scene label map
REGION = 16
DELTA_V, DELTA_D = 0.5, 1.5

def bench_labels(b: int, h: int, w: int, k: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Label maps [b, h, w] of `kind`: "random" (10 % of the pixels ignored) or "blocky" (REGION-sided squares
    of one class, 10 % of them ignored)."""
    if kind == "blocky":
        cells = torch.randint(0, k, (b, -(-h // REGION), -(-w // REGION)), generator=gen)
        cells[torch.rand(cells.shape, generator=gen) < 0.1] = IGNORE
        return cells.repeat_interleave(REGION, 1).repeat_interleave(REGION, 2)[:, :h, :w].contiguous()
    labels = torch.randint(0, k, (b, h, w), generator=gen)
    labels[torch.rand(b, h, w, generator=gen) < 0.1] = IGNORE
    return labels


# (B, D, H, W, K): the shapes the issues fix; --quick uses tiny ones
SHAPES = [(8, 512, 97, 97, 19), (16, 512, 64, 64, 150)]
QUICK_SHAPES = [(2, 16, 9, 11, 5)]
# a shape too small for the device's work to count: its median is what one call costs the host (Python,
# dispatch, launches), which bounds every shape from below on a GPU (docs/benchmarks.md); no targets
HOST_SHAPE = (2, 8, 8, 8, 5)
FUSED_ON = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}  # the fused backends timed per device
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def shape_label(shape: tuple[int, int, int, int, int]) -> str:
    b, d, h, w, k = shape
    return f"B={b} D={d} {h}x{w} K={k}"


@dataclass
class Case:
    """One operator at one shape: how to make its inputs and how many bytes it must move."""

    op: str
    shape: tuple[int, int, int, int, int]
    dtype: torch.dtype
    device: torch.device
    labels: str = "random"  # random: every pixel drawn on its own (the kernels' worst case); blocky: regions

    @property
    def label(self) -> str:
        return shape_label(self.shape) + (f", {self.labels}" if self.op != "gated_blend" else "")

    def inputs(self) -> tuple:
        b, d, h, w, k = self.shape
        gen = torch.Generator().manual_seed(0)

        def rand(*size):
            return torch.randn(*size, generator=gen).to(self.device, self.dtype).requires_grad_(True)

        if self.op == "gated_blend":
            return rand(b, d, h, w), rand(b, d, h, w), rand(b, d, h, w)
        return rand(b, d, h, w), bench_labels(b, h, w, k, self.labels, gen).to(self.device)

    def feature_bytes(self) -> int:
        """size(F): the bytes of the features (of one blend operand for gated_blend)."""
        b, d, h, w, _ = self.shape
        return b * d * h * w * torch.finfo(self.dtype).bits // 8

    def bytes_moved(self) -> int:
        """Minimum traffic of forward + backward (docs/benchmarks.md, "Bytes model")."""
        b, _, h, w, _ = self.shape
        feats = self.feature_bytes()
        labels = b * h * w * 8
        if self.op == "class_centroids":  # fwd: read F, y; bwd: read y, write dF
            return 2 * feats + 2 * labels
        if self.op == "cac_loss":  # fwd: two passes over F, y; bwd: read F, y, write dF
            return 4 * feats + 3 * labels
        return 11 * feats  # fwd: x, s, g -> z; bwd: dz, x, s, g -> dx, ds, dg


def centroids_index_add(feats, labels, num_classes, ignore_index=IGNORE):
    """Segmented mean with index_add_: the idiomatic plain-PyTorch alternative to one-hot."""
    b, d = feats.shape[:2]
    rows = feats.reshape(b, d, -1).transpose(1, 2).reshape(-1, d).float()
    y = labels.reshape(-1)
    valid = y != ignore_index
    segment = (torch.arange(b, device=y.device).repeat_interleave(y.numel() // b) * num_classes + y)[valid]
    sums = rows.new_zeros(b * num_classes, d).index_add_(0, segment, rows[valid])
    counts = torch.bincount(segment, minlength=b * num_classes)
    mu = sums / counts.clamp_min(1).unsqueeze(-1)
    return mu.reshape(b, num_classes, d).to(feats.dtype), counts.reshape(b, num_classes)


def reference_fn(op: str, k: int) -> Callable:
    if op == "class_centroids":
        return lambda f, y: reference.class_centroids(f, y, k, IGNORE)[0]
    if op == "cac_loss":
        return lambda f, y: reference.cac_loss(f, y, k, DELTA_V, DELTA_D, ignore_index=IGNORE)
    return reference.gated_blend


def backend_fn(op: str, k: int, backend: str) -> Callable:
    if op == "class_centroids":
        return lambda f, y: csfr.ops.class_centroids(f, y, k, IGNORE, backend=backend)[0]
    if op == "cac_loss":
        return lambda f, y: csfr.ops.cac_loss(f, y, k, DELTA_V, DELTA_D, ignore_index=IGNORE, backend=backend)
    return lambda x, s, g: csfr.ops.gated_blend(x, s, g, backend=backend)


def implementations(case: Case, backends: list[str]) -> dict[str, Callable]:
    k = case.shape[-1]
    ref = reference_fn(case.op, k)
    impls = {"eager": ref, "compile": torch.compile(ref, dynamic=False)}
    if case.op == "class_centroids":
        impls["index_add_"] = lambda f, y: centroids_index_add(f, y, k)[0]
    impls.update({name: backend_fn(case.op, k, name) for name in backends})
    return impls


def fwd_bwd(fn: Callable, inputs: tuple) -> Callable[[], None]:
    """A closure running fn forward and backward with a fixed upstream gradient."""
    grads = [t for t in inputs if t.requires_grad]
    out = fn(*inputs)
    upstream = torch.randn_like(out) if out.dim() else None
    for t in grads:
        t.grad = None

    def run():  # gradients are dropped at the end, so each call starts without them (peak memory)
        fn(*inputs).backward(upstream)
        for t in grads:
            t.grad = None

    return run


def copy_bandwidth(numel: int, dtype: torch.dtype, device: torch.device, repeat: int) -> float:
    """Measured device copy bandwidth in GB/s (bytes read + written)."""
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, repeat)
    return 2 * src.numel() * src.element_size() / ms / 1e6


def run_case(case: Case, backends: list[str], repeat: int, copy_gbs: float, profile: bool = False,
             calls: int = 0) -> list[dict]:
    inputs = case.inputs()
    rows = []
    for name, fn in implementations(case, backends).items():
        run = fwd_bwd(fn, inputs)
        ms = median_ms(run, case.device, repeat)
        rows.append({"impl": name, "ms": ms, "gbs": case.bytes_moved() / ms / 1e6,
                     "mem": peak_extra_bytes(run, case.device),
                     "per_call": throughput_ms(run, case.device, calls) if calls else None})
        if profile and name not in ("eager", "index_add_"):  # the fused backends and what inductor made
            host = case.shape == HOST_SHAPE  # a call there is all host: list the host's side on a GPU too
            rows[-1]["kernels"], rows[-1]["kernels_ms"] = top_kernels(run, case.device, top=6 if host else 4,
                                                                      host=host)
            rows[-1]["profiled"] = "GPU kernels" if case.device.type == "cuda" and not host else "operators"
        print(f"  {case.op:16s} {case.label:24s} {name:11s} {ms:9.2f} ms", flush=True)
    eager = rows[0]["ms"]
    compiled = rows[1]["ms"]
    for row in rows:
        row.update(vs_eager=eager / row["ms"], vs_compile=compiled / row["ms"], copy_share=row["gbs"] / copy_gbs)
    return rows


def markdown(results: list[tuple[Case, list[dict]]], title: str, copy_gbs: float, args) -> str:
    lines = [f"## {title}", "",
             (f"{datetime.date.today().isoformat()}, torch {torch.__version__}, dtype {args.dtype}, "
              f"{' and '.join(args.labels)} labels, median of {args.repeat} runs of forward + backward, each "
              f"synchronised; 'ms/call, {args.calls} in a row': the median of 3 batches of {args.calls} back-to-back "
              f"calls with one synchronisation each (what a loop that does not wait sees; blank: not measured); "
              f"measured copy bandwidth {copy_gbs:.1f} GB/s. "
              f"Command: `python -m benchmarks.bench_ops {' '.join(sys.argv[1:])}`"),
             "", (f"| op | shape | impl | median ms | ms/call, {args.calls} in a row | x eager | x compile | GB/s | "
                  "% of copy | peak extra MB |"),
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case, rows in results:
        for row in rows:
            mem = "n/a" if row["mem"] is None else f"{row['mem'] / 2**20:.1f}"
            per_call = "" if row["per_call"] is None else f"{row['per_call']:.2f}"
            lines.append(f"| {case.op} | {case.label} | {row['impl']} | {row['ms']:.2f} | {per_call} | "
                         f"{row['vs_eager']:.2f} | {row['vs_compile']:.2f} | {row['gbs']:.1f} | "
                         f"{100 * row['copy_share']:.0f} | {mem} |")
    profiled = [(case, row) for case, rows in results for row in rows if "kernels" in row]
    if profiled:
        lines += ["", ("Where the time goes (`--profile`: torch.profiler over 5 forward + backward runs; per run, "
                       "the most expensive GPU kernels (on a CPU: operators) by self time, then all of them "
                       "together; the sum can pass the median, the profiler adds its own overhead. On a GPU, the "
                       "median's share that the kernels do not fill is the device waiting for the host. At "
                       f"{shape_label(HOST_SHAPE)}, whose median is the host's cost of a call, the rows are the host's "
                       "operators and CUDA runtime calls by self CPU time, on a GPU too):"), "",
                  "| op | shape | impl | kernel | ms | calls | share of the median |", "|---|---|---|---|---:|---:|---:|"]
        for case, row in profiled:
            for k in row["kernels"]:
                name = k["name"] if len(k["name"]) <= 60 else k["name"][:57] + "..."
                lines.append(f"| {case.op} | {case.label} | {row['impl']} | `{name.replace('|', '/')}` | "
                             f"{k['ms']:.3f} | {k['calls']:g} | {100 * k['ms'] / row['ms']:.0f} % |")
            lines.append(f"| {case.op} | {case.label} | {row['impl']} | all {row['profiled']} | {row['kernels_ms']:.3f} | | "
                         f"{100 * row['kernels_ms'] / row['ms']:.0f} % |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Target:
    """A speed or memory target of issue 26 (docs/benchmarks.md, "Targets"), checked per fused backend
    at each of SHAPES; `measure` reads it off a result row (None: not measured)."""

    op: str
    what: str
    bound: float
    at_least: bool
    measure: Callable[[Case, dict, dict[str, dict]], float | None]

    def check(self, value: float) -> bool:
        return value >= self.bound if self.at_least else value <= self.bound


def _versus(impl: str) -> Callable[[Case, dict, dict[str, dict]], float | None]:
    return lambda case, row, rows: rows[impl]["ms"] / row["ms"] if impl in rows else None


TARGETS = [  # issue 26's (docs/benchmarks.md, "Targets")
    Target("cac_loss", "x eager", 5.0, True, _versus("eager")),
    Target("cac_loss", "x compile", 2.0, True, _versus("compile")),
    Target("cac_loss", "share of copy bandwidth", 0.40, True, lambda case, row, rows: row["copy_share"]),
    Target("cac_loss", "peak extra / size(F)", 1.1, False,
           lambda case, row, rows: None if row["mem"] is None else row["mem"] / case.feature_bytes()),
    Target("class_centroids", "x index_add_", 3.0, True, _versus("index_add_")),
    Target("gated_blend", "x eager", 1.8, True, _versus("eager")),
]
REFERENCE_IMPLS = ("eager", "compile", "index_add_")


def check_targets(results: list[tuple[Case, list[dict]]]) -> list[dict]:
    """Every target for every fused implementation timed at a target shape: measured value and PASS/FAIL
    (NOT MEASURED when the operator or shape was not run)."""
    checks = []
    for target in TARGETS:
        for shape in SHAPES:
            found = [(case, rows) for case, rows in results if case.op == target.op and case.shape == shape]
            fused = [row for _, rows in found for row in rows if row["impl"] not in REFERENCE_IMPLS]
            if not fused:
                checks.append({"target": target, "shape": shape, "impl": "-", "value": None, "result": "NOT MEASURED"})
            for case, rows in found:
                by_impl = {row["impl"]: row for row in rows}
                for row in rows:
                    if row["impl"] in REFERENCE_IMPLS:
                        continue
                    value = target.measure(case, row, by_impl)
                    result = "NOT MEASURED" if value is None else "PASS" if target.check(value) else "FAIL"
                    checks.append({"target": target, "shape": shape, "impl": row["impl"], "value": value,
                                   "result": result, "where": case.label})
    return checks


def targets_markdown(checks: list[dict]) -> str:
    """The targets table: what was required, what was measured, PASS or FAIL."""
    lines = ["Targets (issue 26; docs/benchmarks.md):", "",
             "| op | shape | impl | target | required | measured | result |", "|---|---|---|---|---:|---:|---|"]
    for c in checks:
        t = c["target"]
        value = "-" if c["value"] is None else f"{c['value']:.2f}"
        lines.append(f"| {t.op} | {c.get('where', shape_label(c['shape']))} | {c['impl']} | {t.what} | "
                     f"{'>=' if t.at_least else '<='} {t.bound:g} | {value} | {c['result']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the tensors live; the fused backends that run there are timed (default cpu)")
    parser.add_argument("--ops", nargs="+", default=["class_centroids", "cac_loss", "gated_blend"],
                        choices=["class_centroids", "cac_loss", "gated_blend"], help="operators to time (default all)")
    parser.add_argument("--labels", nargs="+", default=["random", "blocky"], choices=["random", "blocky"],
                        help="label maps of class_centroids and cac_loss, each timed in the same run: random "
                             f"(each pixel drawn on its own, the fused kernels' worst case) and/or blocky "
                             f"({REGION}x{REGION} regions of one class, like real label maps) (default both)")
    parser.add_argument("--calls", type=int, default=20,
                        help="also time this many back-to-back calls with one synchronisation (the throughput "
                             "mode; 0: off) (default 20)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="feature dtype (default float32)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per measurement; the median is kept")
    parser.add_argument("--profile", action="store_true",
                        help="also list, per fused backend and torch.compile, the kernels (GPU) or operators (CPU) "
                             "that take the time, from torch.profiler")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes and 2 runs: checks the script works; prints the table and writes "
                             "no results file unless --out is given")
    parser.add_argument("--out", default=None,
                        help="markdown file whose machine section is (re)written (default benchmarks/RESULTS.md; "
                             "none with --quick)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_ops: --device cuda but torch sees no CUDA device")
    if args.quick:
        args.repeat, args.calls = min(args.repeat, 2), min(args.calls, 2)
    dtype = getattr(torch, args.dtype)
    available = [name for name, state in csfr.ops.backends().items() if state == "available" and name != "torch"]
    backends = [name for name in available if name in FUSED_ON[device.type]]
    shapes = QUICK_SHAPES if args.quick else [*SHAPES, HOST_SHAPE]
    title = device_description(device) + (" (quick)" if args.quick else "")
    print(f"{title}; fused backends timed: {', '.join(backends) or 'none'}", flush=True)
    b, d, h, w, _ = max(shapes, key=lambda s: s[0] * s[1] * s[2] * s[3])
    copy_gbs = copy_bandwidth(b * d * h * w, dtype, device, args.repeat)
    out = args.out or (None if args.quick else RESULTS)
    cases = [Case(op, shape, dtype, device, labels) for op in args.ops for shape in shapes
             for labels in (args.labels if op != "gated_blend" else args.labels[:1])]
    results = []
    for case in cases:
        results.append((case, run_case(case, backends, args.repeat, copy_gbs, args.profile, args.calls)))
        section = markdown(results, title, copy_gbs, args)
        if len(results) < len(cases):  # rewritten after every case: a run stopped at a time limit keeps its rows
            section += f"\nIncomplete: {len(results)} of {len(cases)} cases measured so far.\n"
        if device.type == "cuda":  # the targets are set for a GPU
            section += "\n" + targets_markdown(check_targets(results))
        if out is not None:
            write_section(out, title, section)
    print(section)


if __name__ == "__main__":
    main()
