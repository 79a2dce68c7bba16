"""Verify and benchmark csfr on a GPU machine with one command each (docs/cuda.md, "make gpu-check").

    python tools/gpu_check.py check   # build CUDA in place, pytest -m cuda, kernels under compute-sanitizer,
                                      # train the synthetic preset on the GPU (torchrun, bf16) and on the CPU
    python tools/gpu_check.py bench   # build, then bench_ops --device cuda, the training-step benchmark and
                                      # the segment kernels' butterfly limits (benchmarks/butterfly_tuning.cu)
    python tools/gpu_check.py all     # both in one run: the checks side by side, then the benchmarks alone
    python tools/gpu_check.py check --dry-run   # list the steps and their exact commands; run nothing
    python tools/gpu_check.py wheels pydantic   # where pip can download: wheels of missing packages into .whl/

Made for a GPU machine with no package index (torch, triton, nvcc and compute-sanitizer installed):
nothing is downloaded (runtime dependencies the machine lacks come as wheels in .whl/, fetched
beforehand by the `wheels` target where pip works, and are installed first), and the build is
`pip install --no-index --no-deps --no-build-isolation -e .`. Each step runs under its own time
limit; a failed step is reported and the next one still runs (the build excepted: without it nothing
else can), so one session on a GPU finds every problem at once. `all` fits a short lease: after the
build, the tests, the sanitizers and the trainings run at the same time (each in its own lane, pytest
spread over processes when pytest-xdist is there), then the benchmarks run alone so nothing disturbs
their timings.
Everything printed goes to <out>/<target>.log as well, with a summary in <out>/<target>-summary.md
and, for bench, a copy of benchmarks/RESULTS.md: copy <out> off a machine about to go away.
Without a GPU the command stops at once with one line (exit status 1).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# torch's extension build adds these to nvcc; the driver and kernels are compiled with them too
TORCH_NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                    "--expt-relaxed-constexpr"]
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")
BUTTERFLY_LIMITS = (2, 4, 8, 32)  # the variants `butterfly tuning` times (kernels' defaults: 4 and 8)
WHEELS = ROOT / ".whl"  # wheels carried to a machine with no package index (git ignores the folder)
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
TRAIN_CONFIG = "synthetic"


@dataclass
class Step:
    """One step: commands run in order (the step stops at the first that fails), under one time limit.

    `check(output)` may turn the commands' combined output into a failure message (None: fine).
    """

    name: str
    commands: list[list[str]]
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)
    required: bool = False  # a failure stops the run
    check: Callable[[str], str | None] | None = None
    lane: str | None = None  # consecutive steps with lanes run lane beside lane (each lane in order)


def sanitizer_findings(tool: str, output: str) -> str | None:
    """What compute-sanitizer `tool` reported in `output`, or None when its summary says it found nothing.
    A missing summary counts as a finding (the tool did not get to the end)."""
    if tool == "racecheck":
        found = re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", output)
        if not found:
            return "racecheck printed no RACECHECK SUMMARY"
        bad = [f for f in found if any(int(n) for n in f)]
        return f"racecheck: {bad[0][0]} hazard(s) ({bad[0][1]} errors, {bad[0][2]} warnings)" if bad else None
    found = re.findall(r"ERROR SUMMARY: (\d+) errors?", output)
    if not found:
        return f"{tool} printed no ERROR SUMMARY"
    bad = [n for n in found if int(n)]
    return f"{tool}: {bad[0]} error(s)" if bad else None


def driver_check(output: str) -> str | None:
    """The kernel driver's own verdict: its last line must report no wrong value."""
    return None if "kernel_driver: 0 failure(s)" in output else "the kernel driver reported wrong values or stopped"


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): Pydantic_Core -> pydantic-core."""
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements() -> list[str]:
    """The distribution names of the package's runtime dependencies ([project] dependencies)."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [re.match(r"[A-Za-z0-9_.-]+", dep).group(0) for dep in deps]


def installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def carried_wheels(folder: Path) -> dict[str, Path]:
    """The wheels in `folder` by canonical distribution name (a wheel file starts with name-version-)."""
    return {canonical(path.name.split("-")[0]): path for path in sorted(folder.glob("*.whl"))}


def wheels_to_install(folder: Path) -> list[Path]:
    """The carried wheels whose distribution is not installed: the rest are left alone."""
    return [path for name, path in carried_wheels(folder).items() if not installed(name)]


def find_cuda_tool(name: str) -> str | None:
    """A CUDA toolkit program: on PATH, in $CUDA_HOME/bin, beside nvcc, or in /usr/local/cuda*/bin."""
    found = shutil.which(name)
    if found:
        return found
    dirs = [os.path.join(os.environ[v], "bin") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    nvcc = shutil.which("nvcc")
    if nvcc:
        dirs.append(str(Path(nvcc).resolve().parent))
    dirs += sorted(glob.glob("/usr/local/cuda*/bin"), reverse=True)
    for d in dirs:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    return None


def build_steps(py: str, arch: str, wheels: list[Path]) -> list[Step]:
    """Step 1: install the carried wheels of missing dependencies (if any), build the extension in place
    for the GPU present, print the backends; fail without cuda."""
    show = ('import csfr; b = csfr.ops.backends(); print("csfr.ops.backends():", b); '
            'raise SystemExit(0 if b["cuda"] == "available" else "the cuda backend is not available: " + b["cuda"])')
    deps = [[py, "-m", "pip", "install", "--no-index", "--no-deps", *map(str, wheels)]] if wheels else []
    build = [py, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation", "-e", "."]
    return [Step("build", [*deps, build, [py, "-c", show]], 300,
                 env={"CSFR_BUILD_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch}, required=True)]


def nvcc_command(arch: str) -> list[str]:
    """nvcc with the flags the host programs of tools/ are built with against kernels/, for the GPU's
    architecture `arch` (e.g. 9.0): torch's half/bfloat16 restrictions, as in the extension."""
    sm = arch.replace(".", "")
    return [find_cuda_tool("nvcc") or "nvcc", "-std=c++17", "-O3", *TORCH_NVCC_FLAGS,
            f"-gencode=arch=compute_{sm},code=sm_{sm}", "-Ikernels"]


def check_steps(py: str, arch: str, work: Path, iters: int, nproc: int, wheels: list[Path]) -> list[Step]:
    """`make gpu-check`: build, pytest -m cuda, sanitizers, GPU and CPU training of the synthetic preset."""
    sanitizer = find_cuda_tool("compute-sanitizer") or "compute-sanitizer"
    driver = str(work / "kernel_driver")
    sources = ["tests/native/kernel_driver.cu", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "kernels").glob("*.cu"))]
    compile_driver = [*nvcc_command(arch), "-lineinfo", *sources, "-o", driver]

    def sanitize(tool: str) -> Step:
        leak = ["--leak-check", "full"] if tool == "memcheck" else []
        return Step(f"compute-sanitizer {tool}", [[sanitizer, "--tool", tool, "--error-exitcode", "1", *leak, driver]],
                    120, check=lambda out: sanitizer_findings(tool, out) or driver_check(out), lane="kernels")

    gpu, cpu = work / "train-gpu", work / "train-cpu"
    schedule = ["--set", f"train.iters={iters}", "--set", f"train.val_interval={iters}",
                "--set", f"train.ckpt_interval={iters}", "--no-progress"]
    train_gpu = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                 "-m", "csfr.train", "--config", TRAIN_CONFIG, "--work-dir", str(gpu), "--amp", "bfloat16",
                 "--set", "train.device=cuda", *schedule]
    train_cpu = [py, "-m", "csfr.train", "--config", TRAIN_CONFIG, "--work-dir", str(cpu),
                 "--set", "train.device=cpu", *schedule]

    def evaluate(run: Path) -> list[str]:
        return [py, "-m", "csfr.evaluate", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--flip",
                "--json", str(run / "eval_flip.json")]

    # pytest-xdist, where installed, spreads the tests over processes (the Triton compiles dominate)
    workers = max(2, min(8, (os.cpu_count() or 2) // 2)) if importlib.util.find_spec("xdist") else 0
    xdist = ["-n", str(workers)] if workers else []
    return [
        *build_steps(py, arch, wheels),
        Step("pytest -m cuda", [[py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", *xdist]], 300,
             env={"OMP_NUM_THREADS": "2"} if workers else {}, lane="tests"),
        Step("kernel driver", [compile_driver, [driver]], 120, check=driver_check, lane="kernels"),
        *(sanitize(tool) for tool in SANITIZER_TOOLS),
        Step("train on the GPU", [["rm", "-rf", str(gpu)], train_gpu, evaluate(gpu)], 180, lane="train"),
        Step("train on the CPU", [["rm", "-rf", str(cpu)], train_cpu, evaluate(cpu)], 150,
             env={"OMP_NUM_THREADS": "4"}, lane="train"),  # the other lanes use CPU cores too
    ]


def butterfly_tuning_step(arch: str, work: Path) -> Step:
    """Times the CUDA segment kernels built with each limit on the classes a warp folds by butterflies
    (benchmarks/butterfly_tuning.cu; docs/cuda.md): the builds side by side, then each variant alone. Its
    markdown rows go to the log."""
    sources = ["benchmarks/butterfly_tuning.cu", "kernels/segment_sum.cu", "kernels/cac_pixel_pass.cu"]
    builds = " & ".join(shlex.join([
        *nvcc_command(arch), f"-DCSFR_SEGMENT_SUM_BUTTERFLY_CLASSES={n}", f"-DCSFR_PIXEL_PASS_BUTTERFLY_CLASSES={n}",
        *sources, "-o", str(work / f"butterfly_{n}")]) for n in BUTTERFLY_LIMITS)
    runs = " && ".join(shlex.quote(str(work / f"butterfly_{n}")) for n in BUTTERFLY_LIMITS)
    header = "echo '| limit | kernel | shape | labels | median ms | rel. error |'; echo '|---:|---|---|---|---:|---:|'"
    return Step("butterfly tuning", [["bash", "-c", f"{builds} & wait; {header}; {runs}"]], 150,
                check=butterfly_findings)


def butterfly_findings(output: str) -> str | None:
    """Whether benchmarks/butterfly_tuning.cu printed every row (2 kernels x 4 cases per limit) and every
    variant's sums matched the float64 reference (relative error under 1e-5, float32 sums)."""
    rows = re.findall(r"^\| (\d+) \| (\w+) \| [^|]+ \| \w+ \| [\d.]+ \| ([\d.e+-]+|nan|inf) \|$", output, re.MULTILINE)
    if len(rows) != 8 * len(BUTTERFLY_LIMITS):
        return f"butterfly tuning printed {len(rows)} rows of {8 * len(BUTTERFLY_LIMITS)}"
    wrong = [f"limit {n} {kernel}" for n, kernel, err in rows if not float(err) < 1e-5]
    return f"wrong sums: {', '.join(wrong)}" if wrong else None


def bench_steps(py: str, arch: str, work: Path, wheels: list[Path]) -> list[Step]:
    """`make gpu-bench`: build, operator benchmark on CUDA (random and blocky labels in one run, per-call
    latency and throughput), training-step benchmark, the segment kernels' butterfly limits."""
    return [
        *build_steps(py, arch, wheels),
        Step("bench_ops --device cuda",
             [[py, "-m", "benchmarks.bench_ops", "--device", "cuda", "--labels", "random", "blocky", "--profile"]],
             480),
        Step("bench_train_step", [[py, "-m", "benchmarks.bench_train_step", "--device", "cuda"]], 180),
        butterfly_tuning_step(arch, work),
    ]


def all_steps(py: str, arch: str, work: Path, iters: int, nproc: int, wheels: list[Path]) -> list[Step]:
    """`make gpu-all`: check's steps, then bench's after them (alone, so their timings are undisturbed)."""
    return [*check_steps(py, arch, work, iters, nproc, wheels), *bench_steps(py, arch, work, wheels)[1:]]


def train_report(work: Path, iters: int) -> list[str]:
    """The mIoUs of the GPU and CPU runs (last validation, and evaluate --flip), as markdown lines."""
    lines = [f"| run ({TRAIN_CONFIG}, {iters} iterations) | validation mIoU | evaluate --flip mIoU |", "|---|---:|---:|"]
    values = {}
    for label, run in (("GPU, torchrun, bf16 autocast", "train-gpu"), ("CPU, float32", "train-cpu")):
        got = []
        for name in ("metrics.json", "eval_flip.json"):
            path = work / run / name
            got.append(json.loads(path.read_text()).get("mIoU") if path.is_file() else None)
        values[run] = got
        lines.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in got) + " |")
    gpu, cpu = values["train-gpu"][1], values["train-cpu"][1]
    if gpu is not None and cpu is not None:
        lines += ["", (f"GPU - CPU (evaluate --flip): {gpu - cpu:+.2f} mIoU (same seed and data; float rounding "
                       "and atomics make the runs drift apart, so expect a few points, not 0)")]
    return lines


class Log:
    """Writes to the console and to the log file at once."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w")
        self.lock = threading.Lock()

    def write(self, text: str, prefix: str = "") -> None:
        if prefix:
            text = "".join(prefix + line for line in text.splitlines(keepends=True))
        with self.lock:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.file.write(text)
            self.file.flush()


def run_command(cmd: list[str], env: dict[str, str], deadline: float, log: Log,
                prefix: str = "") -> tuple[int | None, str]:
    """Runs cmd in its own process group, streaming its output (each line after `prefix`);
    (return code or None on timeout, output)."""
    log.write(f"$ {shlex.join(cmd)}\n", prefix)
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), kill)
    timer.start()
    chunks = []
    for line in proc.stdout:
        chunks.append(line)
        log.write(line, prefix)
    rc = proc.wait()
    timer.cancel()
    return (None if timed_out.is_set() else rc), "".join(chunks)


def run_step(step: Step, label: str, log: Log, end: float, prefix: str = "") -> dict:
    """Runs one step until its own limit or `end`; its result: name, status (ok / FAIL / TIMEOUT), seconds, why."""
    start = time.monotonic()
    deadline = min(start + step.timeout_s, end)
    log.write(f"\n=== {label}: {step.name} (limit {deadline - start:.0f} s) ===\n", prefix)
    status, why, outputs = "ok", "", []
    for cmd in step.commands:
        rc, out = run_command(cmd, step.env, deadline, log, prefix)
        outputs.append(out)
        if rc is None:
            status, why = "TIMEOUT", f"over {deadline - start:.0f} s in `{' '.join(cmd[:4])} ...`"
            break
        if rc != 0:
            status, why = "FAIL", f"exit status {rc} from `{' '.join(cmd[:4])} ...`"
            break
    if status != "TIMEOUT" and step.check is not None:
        problem = step.check("".join(outputs))
        if problem:
            status, why = "FAIL", problem + (f" ({why})" if why else "")
    seconds = time.monotonic() - start
    log.write(f"=== {step.name}: {status} in {seconds:.0f} s{': ' + why if why else ''} ===\n", prefix)
    return {"step": step.name, "status": status, "seconds": seconds, "why": why}


def run_steps(steps: list[Step], log: Log, budget_s: float) -> list[dict]:
    """Runs the steps within budget_s seconds in all; one result per step, in the steps' order: name,
    status (ok / FAIL / TIMEOUT / skipped), seconds, why. A step gets its own limit or what is left of
    the budget. Consecutive steps with lanes run together, one thread per lane, each lane's steps in
    order; a lane's output lines start with `[lane] `."""
    results: list[dict | None] = [None] * len(steps)
    end = time.monotonic() + budget_s

    def run_lane(indices: list[int], stop: str | None) -> None:
        for k in indices:
            why = stop or (f"the {budget_s:.0f} s budget was spent" if time.monotonic() >= end else None)
            if why:
                results[k] = {"step": steps[k].name, "status": "skipped", "seconds": 0.0, "why": why}
                continue
            lane = steps[k].lane
            results[k] = run_step(steps[k], f"step {k + 1}/{len(steps)}", log, end, f"[{lane}] " if lane else "")

    stop = None
    i = 0
    while i < len(steps):
        j = i + 1
        if steps[i].lane is not None:
            while j < len(steps) and steps[j].lane is not None:
                j += 1
        lanes: dict[str | None, list[int]] = {}
        for k in range(i, j):
            lanes.setdefault(steps[k].lane, []).append(k)

        threads = [threading.Thread(target=run_lane, args=(indices, stop)) for indices in lanes.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for k in range(i, j):
            if stop is None and results[k]["status"] != "ok" and steps[k].required:
                stop = f"step {steps[k].name!r} failed"
        i = j
    return results


def summary(target: str, device: str, results: list[dict], extra: list[str], wall_s: float) -> str:
    """The markdown summary: the machine, the wall time (steps in lanes overlap, so it is not the sum
    of theirs), one row per step, then any result lines."""
    when = datetime.datetime.now().isoformat(timespec="seconds")
    lines = [f"# make gpu-{target}: {device}", "", f"{when}, {wall_s:.0f} s of wall time", "",
             "| step | status | seconds | note |", "|---|---|---:|---|"]
    lines += [f"| {r['step']} | {r['status']} | {r['seconds']:.0f} | {r['why']} |" for r in results]
    if extra:
        lines += ["", *extra]
    return "\n".join(lines) + "\n"


def gpu_present() -> tuple[str | None, str, str]:
    """(why not, when no usable CUDA GPU; the GPU's description; its TORCH_CUDA_ARCH_LIST entry)."""
    try:
        import torch
    except ImportError:
        return "torch is not importable by " + sys.executable, "", ""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build (no CUDA)", "", ""
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU", "", ""
    major, minor = torch.cuda.get_device_capability(0)
    props = torch.cuda.get_device_properties(0)
    return None, f"{props.name} (sm_{major}{minor}), torch {torch.__version__}, CUDA {torch.version.cuda}", \
        f"{major}.{minor}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", choices=["check", "bench", "all", "wheels"],
                   help="wheels: download wheels of PACKAGES (with their dependencies) for the GPU machine's "
                        "Python into .whl/, on a machine where pip can download; "
                        "check: build, pytest -m cuda, compute-sanitizer, GPU and CPU training; "
                        "bench: build, operator and training-step benchmarks into benchmarks/RESULTS.md; "
                        "all: check then bench in one run, for a short lease")
    p.add_argument("packages", nargs="*", metavar="PACKAGES", help="for wheels: the distributions to fetch")
    p.add_argument("--python-version", default="3.12",
                   help="for wheels: the GPU machine's Python version (default 3.12)")
    p.add_argument("--out", type=Path, default=Path("runs/gpu-check"),
                   help="where the log, the summary (and for bench a copy of RESULTS.md) go (default runs/gpu-check)")
    p.add_argument("--work", type=Path, default=Path("runs/gpu-check-work"),
                   help="scratch folder: the driver binary and the training runs (default runs/gpu-check-work)")
    p.add_argument("--iters", type=int, default=300, help="training iterations of the synthetic preset (default 300)")
    p.add_argument("--nproc", type=int, default=1,
                   help="torchrun processes for the GPU training (default 1; DDP and SyncBN need 2 or more GPUs)")
    p.add_argument("--budget", type=float, default=540,
                   help="seconds for all steps together (default 540: 9 minutes); steps left over are skipped")
    p.add_argument("--dry-run", action="store_true", help="print the steps and their exact commands; run nothing")
    args = p.parse_args(argv)
    if args.iters < 1 or args.nproc < 1:
        p.error("--iters and --nproc must be >= 1")
    if (args.target == "wheels") != bool(args.packages):
        p.error("wheels takes the names of the distributions to fetch; check and bench take none")
    return args


def download_wheels(packages: list[str], python_version: str) -> int:
    """pip download of binary wheels for a Linux x86-64 CPython `python_version` into .whl/."""
    platforms = [arg for name in WHEEL_PLATFORMS for arg in ("--platform", name)]
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--implementation", "cp",
           "--python-version", python_version, *platforms, "-d", str(WHEELS), *packages]
    print(f"$ {shlex.join(cmd)}", flush=True)
    return subprocess.call(cmd)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.target == "wheels":
        return download_wheels(args.packages, args.python_version)
    work = args.work if args.work.is_absolute() else ROOT / args.work
    out = args.out if args.out.is_absolute() else ROOT / args.out
    why_not, device, arch = (None, "", "") if args.dry_run else gpu_present()
    if why_not:
        print(f"gpu-{args.target}: no usable CUDA GPU: {why_not}; run it on a GPU machine "
              f"(--dry-run lists the steps)", file=sys.stderr)
        return 1
    carried = carried_wheels(WHEELS)
    missing = [name for name in runtime_requirements() if not installed(name) and canonical(name) not in carried]
    if missing and not args.dry_run:
        names = " ".join(missing)
        print(f"gpu-{args.target}: {names} not installed and no package index here: where pip can download, run "
              f"`make gpu-wheels GPU_WHEELS='{names}'` and bring the .whl folder along", file=sys.stderr)
        return 1
    py = sys.executable
    arch = arch or "X.Y"
    wheels = wheels_to_install(WHEELS)
    steps = {"check": lambda: check_steps(py, arch, work, args.iters, args.nproc, wheels),
             "bench": lambda: bench_steps(py, arch, work, wheels),
             "all": lambda: all_steps(py, arch, work, args.iters, args.nproc, wheels)}[args.target]()
    if args.dry_run:
        if arch == "X.Y":
            print("X.Y: the compute capability of the GPU present (9.0 on an H100), XY the same without the dot")
        for number, step in enumerate(steps, 1):
            env = " ".join(f"{k}={v}" for k, v in step.env.items())
            notes = "".join([", required"] * step.required + [f", lane {step.lane}"] * bool(step.lane))
            print(f"step {number}: {step.name} (limit {step.timeout_s} s{notes})")
            for cmd in step.commands:
                print(f"  {env + ' ' if env else ''}{shlex.join(cmd)}")
        return 0
    if args.target in ("check", "all"):
        missing = [name for name in ("nvcc", "compute-sanitizer") if find_cuda_tool(name) is None]
        if missing:
            print(f"gpu-{args.target}: {' and '.join(missing)} not found (PATH, $CUDA_HOME/bin, /usr/local/cuda*/bin)",
                  file=sys.stderr)
            return 1
    work.mkdir(parents=True, exist_ok=True)
    log = Log(out / f"gpu-{args.target}.log")
    log.write(f"gpu-{args.target} on {device}; log {log.file.name}\n")
    start = time.monotonic()
    results = run_steps(steps, log, args.budget)
    wall_s = time.monotonic() - start
    extra = train_report(work, args.iters) if args.target in ("check", "all") else []
    if args.target in ("bench", "all"):
        shutil.copy(ROOT / "benchmarks" / "RESULTS.md", out / "RESULTS.md")
        extra += [f"Tables (with the targets' PASS/FAIL): benchmarks/RESULTS.md, copied to {out / 'RESULTS.md'}"]
    text = summary(args.target, device, results, extra, wall_s)
    (out / f"gpu-{args.target}-summary.md").write_text(text)
    log.write("\n" + text)
    failed = [r["step"] for r in results if r["status"] != "ok"]
    if failed:
        log.write(f"gpu-{args.target}: FAILED: {', '.join(failed)}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
