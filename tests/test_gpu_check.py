"""`make gpu-check` / `make gpu-bench` (tools/gpu_check.py) and the GPU benchmarks' CPU-side parts: the
targets exist and list the right steps, the script stops with one line without a GPU, steps are run,
time-boxed and summarised, sanitizer reports are read, and the benchmark tables are built from
measured numbers."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HAS_GPU = torch.cuda.is_available()


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return load(ROOT / "tools" / "gpu_check.py", "gpu_check")


@pytest.fixture(scope="module")
def bench_ops():
    return load(ROOT / "benchmarks" / "bench_ops.py", "bench_ops")


def dry_run(target: str) -> list[tuple[str, list[str]]]:
    """(step name, its command lines) from --dry-run."""
    out = subprocess.run([sys.executable, "tools/gpu_check.py", target, "--dry-run"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    steps = []
    for line in out.splitlines():
        if line.startswith("step "):
            steps.append((line.split(": ", 1)[1].split(" (limit")[0], []))
        elif line.startswith("  "):
            steps[-1][1].append(line.strip())
    return steps


@pytest.mark.skipif(shutil.which("make") is None, reason="make not found")
@pytest.mark.parametrize("target", ["check", "bench", "all"])
def test_make_targets_call_the_script(target, tmp_path):
    out = subprocess.run(["make", "-n", f"gpu-{target}", f"GPU_CHECK_OUT={tmp_path}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert f"tools/gpu_check.py {target} --out {tmp_path}" in out
    assert "pip install" not in out  # no `install` prerequisite: GPU machines have no package index


def test_check_dry_run_lists_the_steps_in_order():
    steps = dry_run("check")
    assert [name for name, _ in steps] == [
        "build", "pytest -m cuda", "kernel driver", "compute-sanitizer memcheck", "compute-sanitizer racecheck",
        "compute-sanitizer synccheck", "train on the GPU", "train on the CPU"]
    cmds = dict(steps)
    assert cmds["build"][0].startswith("CSFR_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=")
    assert cmds["build"][0].endswith("-m pip install --no-index --no-deps --no-build-isolation -e .")
    assert "csfr.ops.backends()" in cmds["build"][1]
    assert "-m pytest -m cuda -q -p no:cacheprovider" in cmds["pytest -m cuda"][0]
    compile_cmd, run_cmd = cmds["kernel driver"]
    assert "tests/native/kernel_driver.cu" in compile_cmd and "kernels/segment_sum.cu" in compile_cmd
    driver = compile_cmd.rsplit(" -o ", 1)[1]
    assert run_cmd == driver
    for tool in ("memcheck", "racecheck", "synccheck"):
        cmd = cmds[f"compute-sanitizer {tool}"][0]
        assert f"--tool {tool} --error-exitcode 1" in cmd and cmd.endswith(driver)
    train = cmds["train on the GPU"][1]
    assert "-m torch.distributed.run --standalone --nproc_per_node 1 -m csfr.train --config synthetic" in train
    assert "--amp bfloat16" in train and "train.device=cuda" in train and "train.iters=300" in train
    assert "-m csfr.evaluate" in cmds["train on the GPU"][2] and "--flip" in cmds["train on the GPU"][2]
    assert "train.device=cpu" in cmds["train on the CPU"][1]


def test_bench_dry_run_lists_the_steps_in_order():
    steps = dry_run("bench")
    assert [name for name, _ in steps] == ["build", "bench_ops --device cuda", "bench_train_step", "butterfly tuning"]
    assert steps[1][1][0].endswith("-m benchmarks.bench_ops --device cuda --labels random blocky --profile")
    assert steps[2][1][0].endswith("-m benchmarks.bench_train_step --device cuda")
    tuning = steps[3][1][0]
    assert tuning.count("benchmarks/butterfly_tuning.cu kernels/segment_sum.cu kernels/cac_pixel_pass.cu") == 4
    for n in (2, 4, 8, 32):  # each limit built into its own binary, then run
        assert f"-DCSFR_SEGMENT_SUM_BUTTERFLY_CLASSES={n} -DCSFR_PIXEL_PASS_BUTTERFLY_CLASSES={n}" in tuning
        assert tuning.count(f"butterfly_{n}") == 2
    assert "& wait;" in tuning


def test_training_commands_are_accepted_by_the_clis(gpu_check, tmp_path, capsys):
    """The exact train and evaluate arguments of the check parse (the train config is resolved and printed)."""
    from csfr import evaluate, train

    steps = {s.name: s for s in gpu_check.check_steps(sys.executable, "9.0", tmp_path, 300, 1, [])}
    _, train_cmd, eval_cmd = steps["train on the GPU"].commands
    args = train_cmd[train_cmd.index("csfr.train") + 1:]
    assert train.main([*args, "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert (config["train"]["iters"], config["train"]["amp"], config["train"]["device"]) == (300, "bfloat16", "cuda")
    parsed = evaluate.parser().parse_args(eval_cmd[eval_cmd.index("csfr.evaluate") + 1:])
    assert parsed.flip and parsed.checkpoint == tmp_path / "train-gpu" / "checkpoints" / "best.pt"


@pytest.mark.skipif(HAS_GPU, reason="a GPU is visible")
@pytest.mark.parametrize("target", ["check", "bench"])
def test_without_a_gpu_it_stops_with_one_line(target, tmp_path):
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", target, "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gpu-{target}: no usable CUDA GPU: torch ")
    assert not any(tmp_path.iterdir())  # nothing was started


def test_all_is_check_then_bench_with_the_checks_in_lanes():
    out = subprocess.run([sys.executable, "tools/gpu_check.py", "all", "--dry-run"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    steps = dry_run("all")
    assert steps == dry_run("check") + dry_run("bench")[1:]
    lanes = {line.split(": ", 1)[1].split(" (limit")[0]: line.split("lane ")[1].rstrip(")")
             for line in out.splitlines() if line.startswith("step ") and "lane " in line}
    assert lanes == {"pytest -m cuda": "tests", "kernel driver": "kernels", "compute-sanitizer memcheck": "kernels",
                     "compute-sanitizer racecheck": "kernels", "compute-sanitizer synccheck": "kernels",
                     "train on the GPU": "train", "train on the CPU": "train"}  # the build and benchmarks run alone


def test_lanes_run_side_by_side_each_in_order(gpu_check, tmp_path):
    py = sys.executable
    Step = gpu_check.Step
    sleep = "import time; time.sleep(2); print('{}')"
    steps = [Step("alone", [[py, "-c", "print('alone')"]], 60),
             Step("a1", [[py, "-c", sleep.format("a1")]], 60, lane="a"),
             Step("b1", [[py, "-c", sleep.format("b1")]], 60, lane="b"),
             Step("a2", [[py, "-c", "import sys; sys.exit(4)"]], 60, lane="a"),
             Step("c1", [[py, "-c", sleep.format("c1")]], 60, lane="c"),
             Step("last", [[py, "-c", "print('last')"]], 60)]
    log = gpu_check.Log(tmp_path / "log.txt")
    start = time.monotonic()
    results = gpu_check.run_steps(steps, log, budget_s=120)
    assert time.monotonic() - start < 5  # three 2 s sleeps side by side, not 6 s one after another
    assert [(r["step"], r["status"]) for r in results] == [
        ("alone", "ok"), ("a1", "ok"), ("b1", "ok"), ("a2", "FAIL"), ("c1", "ok"), ("last", "ok")]
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert "[a] a1" in lines and "[b] b1" in lines and "[c] c1" in lines and "alone" in lines
    assert lines.index("[a] a1") < lines.index("[a] === a2: FAIL in 0 s: exit status 4 from "
                                               f"`{py} -c import sys; sys.exit(4) ...` ===")
    assert lines.index("last") > max(lines.index(f"[{x}] {x}1") for x in "abc")  # after every lane ended


def test_steps_run_in_order_time_boxed_and_checked(gpu_check, tmp_path):
    py = sys.executable
    Step = gpu_check.Step
    steps = [
        Step("fine", [[py, "-c", "print('first')"], [py, "-c", "print('second')"]], 60),
        Step("fails", [[py, "-c", "import sys; sys.exit(3)"], [py, "-c", "print('never')"]], 60),
        Step("slow", [[py, "-c", "import time; time.sleep(30)"]], 1),
        Step("checked", [[py, "-c", "print('ERROR SUMMARY: 2 errors')"]], 60,
             check=lambda out: gpu_check.sanitizer_findings("memcheck", out)),
        Step("required", [[py, "-c", "import sys; sys.exit(1)"]], 60, required=True),
        Step("after", [[py, "-c", "print('after')"]], 60),
    ]
    log = gpu_check.Log(tmp_path / "log.txt")
    results = gpu_check.run_steps(steps, log, budget_s=120)
    assert [(r["step"], r["status"]) for r in results] == [
        ("fine", "ok"), ("fails", "FAIL"), ("slow", "TIMEOUT"), ("checked", "FAIL"), ("required", "FAIL"),
        ("after", "skipped")]
    assert results[2]["seconds"] < 20
    assert "exit status 3" in results[1]["why"] and results[3]["why"] == "memcheck: 2 error(s)"
    text = (tmp_path / "log.txt").read_text()
    assert "first\n" in text and "second\n" in text and "never" not in text and "after\n" not in text


def test_budget_skips_what_does_not_fit(gpu_check, tmp_path):
    py = sys.executable
    steps = [gpu_check.Step("long", [[py, "-c", "import time; time.sleep(30)"]], 60),
             gpu_check.Step("next", [[py, "-c", "print(1)"]], 60)]
    results = gpu_check.run_steps(steps, gpu_check.Log(tmp_path / "log.txt"), budget_s=1)
    assert [r["status"] for r in results] == ["TIMEOUT", "skipped"]


@pytest.mark.parametrize("tool, output, finding", [
    ("memcheck", "========= ERROR SUMMARY: 0 errors\n", None),
    ("memcheck", "========= Invalid __global__ read\n========= ERROR SUMMARY: 1 error\n", "memcheck: 1 error(s)"),
    ("synccheck", "kernel_driver: 0 failure(s)\n", "synccheck printed no ERROR SUMMARY"),
    ("racecheck", "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n", None),
    ("racecheck", "========= RACECHECK SUMMARY: 1 hazard displayed (0 errors, 1 warning)\n",
     "racecheck: 1 hazard(s) (0 errors, 1 warnings)"),
    ("racecheck", "========= ERROR SUMMARY: 0 errors\n", "racecheck printed no RACECHECK SUMMARY"),
])
def test_sanitizer_findings(gpu_check, tool, output, finding):
    assert gpu_check.sanitizer_findings(tool, output) == finding


def test_butterfly_findings(gpu_check):
    row = "| {n} | {kernel} | B=8 D=512 97x97 K=19 | random | 0.373 | {err} |"
    rows = [row.format(n=n, kernel=k, err="7.5e-08") for n in gpu_check.BUTTERFLY_LIMITS
            for k in ("segment_sum", "cac_pixel_pass") for _ in range(4)]
    assert gpu_check.butterfly_findings("\n".join(rows)) is None
    assert gpu_check.butterfly_findings("\n".join(rows[:-1])).startswith("butterfly tuning printed 31 rows")
    for bad in ("3.1e-02", "nan"):
        broken = [*rows[:-1], row.format(n=32, kernel="cac_pixel_pass", err=bad)]
        assert gpu_check.butterfly_findings("\n".join(broken)) == "wrong sums: limit 32 cac_pixel_pass"


def test_summary_names_the_device_and_every_step(gpu_check):
    results = [{"step": "build", "status": "ok", "seconds": 61.4, "why": ""},
               {"step": "pytest -m cuda", "status": "FAIL", "seconds": 12.0, "why": "exit status 1"}]
    text = gpu_check.summary("check", "NVIDIA H100 80GB HBM3 (sm_90)", results, ["| extra |"], 65.2)
    assert text.startswith("# make gpu-check: NVIDIA H100 80GB HBM3 (sm_90)\n")
    assert "| build | ok | 61 |  |" in text and "| pytest -m cuda | FAIL | 12 | exit status 1 |" in text
    assert "65 s of wall time" in text and text.endswith("| extra |\n")


def test_train_report_puts_gpu_next_to_cpu(gpu_check, tmp_path):
    for run, (val, flip) in {"train-gpu": (50.0, 52.5), "train-cpu": (48.0, 51.25)}.items():
        (tmp_path / run).mkdir()
        (tmp_path / run / "metrics.json").write_text(json.dumps({"mIoU": val}))
        (tmp_path / run / "eval_flip.json").write_text(json.dumps({"mIoU": flip}))
    lines = gpu_check.train_report(tmp_path, 300)
    assert "| GPU, torchrun, bf16 autocast | 50.00 | 52.50 |" in lines
    assert "| CPU, float32 | 48.00 | 51.25 |" in lines
    assert any(line.startswith("GPU - CPU (evaluate --flip): +1.25 mIoU") for line in lines)
    (tmp_path / "train-gpu" / "eval_flip.json").unlink()  # a failed run shows as "-"
    assert "| GPU, torchrun, bf16 autocast | 50.00 | - |" in gpu_check.train_report(tmp_path, 300)


def test_targets_pass_or_fail_on_the_measured_numbers(bench_ops):
    shape = bench_ops.SHAPES[0]
    cac = bench_ops.Case("cac_loss", shape, torch.float32, torch.device("cpu"))
    size_f = cac.feature_bytes()
    rows = [{"impl": "eager", "ms": 60.0}, {"impl": "compile", "ms": 12.0},
            {"impl": "cuda", "ms": 10.0, "copy_share": 0.75, "mem": 1.05 * size_f},
            {"impl": "triton", "ms": 20.0, "copy_share": 0.5, "mem": 2.0 * size_f}]
    blend = bench_ops.Case("gated_blend", shape, torch.float32, torch.device("cpu"))
    blend_rows = [{"impl": "eager", "ms": 5.0}, {"impl": "compile", "ms": 3.0},
                  {"impl": "cuda", "ms": 2.0, "copy_share": 0.9, "mem": 0}]
    checks = bench_ops.check_targets([(cac, rows), (blend, blend_rows)])
    got = {(c["target"].op, c["target"].what, c["shape"], c["impl"]): (c["value"], c["result"]) for c in checks}
    assert got[("cac_loss", "x eager", shape, "cuda")] == (6.0, "PASS")
    assert got[("cac_loss", "x eager", shape, "triton")] == (3.0, "FAIL")
    assert got[("cac_loss", "x compile", shape, "cuda")] == (1.2, "FAIL")
    assert got[("cac_loss", "share of copy bandwidth", shape, "cuda")] == (0.75, "PASS")
    assert got[("cac_loss", "peak extra / size(F)", shape, "cuda")] == (pytest.approx(1.05), "PASS")
    assert got[("cac_loss", "peak extra / size(F)", shape, "triton")] == (2.0, "FAIL")
    assert got[("gated_blend", "x eager", shape, "cuda")] == (2.5, "PASS")
    # not run: class_centroids at both shapes, the second shape of the others
    assert got[("class_centroids", "x index_add_", shape, "-")] == (None, "NOT MEASURED")
    assert got[("cac_loss", "x eager", bench_ops.SHAPES[1], "-")] == (None, "NOT MEASURED")
    table = bench_ops.targets_markdown(checks)
    assert "| cac_loss | B=8 D=512 97x97 K=19, random | cuda | x compile | >= 2 | 1.20 | FAIL |" in table
    assert "| cac_loss | B=8 D=512 97x97 K=19, random | cuda | peak extra / size(F) | <= 1.1 | 1.05 | PASS |" in table


def test_train_step_benchmark_runs_on_cpu(tmp_path):
    """bench_train_step at a tiny size on the CPU, so the GPU benchmark's code cannot rot."""
    bench = load(ROOT / "benchmarks" / "bench_train_step.py", "bench_train_step")
    out = tmp_path / "RESULTS.md"
    out.write_text("# Operator benchmark results\n\n## Some GPU\n\nkept\n")
    bench.main(["--device", "cpu", "--config", "synthetic", "--models", "csfr_r50_d8", "fcn_r50_d8", "--size", "33",
                "--steps", "1", "--warmup", "1", "--set", "model.options.width=8", "--out", str(out)])
    text = out.read_text()
    assert "## Some GPU\n\nkept" in text and "## Training step: " in text
    assert "33x33 crops, batch 2, autocast bfloat16" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith(("| csfr_r50_d8", "| fcn_r50_d8"))]
    assert [r[0].strip() for r in rows] == ["csfr_r50_d8", "fcn_r50_d8"]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
    assert "csfr_r50_d8 / fcn_r50_d8 step time: x" in text


def test_train_step_batch_has_blocky_labels_and_an_ignore_band():
    bench = load(ROOT / "benchmarks" / "bench_train_step.py", "bench_train_step")
    images, labels = bench.make_batch(2, 65, torch.device("cpu"))
    assert images.shape == (2, 3, 65, 65) and labels.shape == (2, 65, 65) and labels.dtype == torch.long
    assert (labels[:, 65 - 65 // 8:] == bench.IGNORE).all()
    kept = labels[:, : 65 - 65 // 8]
    assert kept.max() < bench.NUM_CLASSES and (kept[:, :32, :32] == kept[:, :1, :1]).all()


def test_carried_wheels_of_missing_packages_are_installed_first(gpu_check, tmp_path):
    fake = tmp_path / "csfr_no_such_dist-1.0-py3-none-any.whl"
    for name in (fake.name, "numpy-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"):  # numpy is installed
        (tmp_path / name).write_bytes(b"")
    assert set(gpu_check.carried_wheels(tmp_path)) == {"csfr-no-such-dist", "numpy"}
    wheels = gpu_check.wheels_to_install(tmp_path)
    assert wheels == [fake]
    first = gpu_check.build_steps(sys.executable, "9.0", wheels)[0].commands[0]
    assert first == [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", str(fake)]
    assert gpu_check.build_steps(sys.executable, "9.0", [])[0].commands[0][-2:] == ["-e", "."]


def test_missing_dependency_stops_with_one_line(gpu_check, monkeypatch, tmp_path, capsys):
    assert {"torch", "numpy"} <= set(gpu_check.runtime_requirements())
    monkeypatch.setattr(gpu_check, "gpu_present", lambda: (None, "Fake GPU (sm_90)", "9.0"))
    monkeypatch.setattr(gpu_check, "installed", lambda name: gpu_check.canonical(name) != "numpy")
    monkeypatch.setattr(gpu_check, "find_cuda_tool", lambda name: None)
    monkeypatch.setattr(gpu_check, "WHEELS", tmp_path)
    assert gpu_check.main(["check", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [("gpu-check: numpy not installed and no package index here: where pip can download, run "
                    "`make gpu-wheels GPU_WHEELS='numpy'` and bring the .whl folder along")]
    (tmp_path / "numpy-9.9-py3-none-any.whl").write_bytes(b"")  # carried: the check goes on to the CUDA tools
    assert gpu_check.main(["check", "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith("gpu-check: nvcc and compute-sanitizer not found")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["check", "bench"])
def test_a_run_leaves_log_summary_and_results_in_out(gpu_check, monkeypatch, tmp_path, target):
    """main() end to end with a fake GPU and stand-in steps: what a machine about to go away leaves in --out."""
    py = sys.executable
    fake = [gpu_check.Step("build", [[py, "-c", "print('built')"]], 60, required=True),
            gpu_check.Step("broken", [[py, "-c", "import sys; sys.exit(2)"]], 60)]
    monkeypatch.setattr(gpu_check, "gpu_present", lambda: (None, "Fake GPU (sm_90)", "9.0"))
    monkeypatch.setattr(gpu_check, "find_cuda_tool", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(gpu_check, f"{target}_steps", lambda *args: fake)
    out = tmp_path / "out"
    assert gpu_check.main([target, "--out", str(out), "--work", str(tmp_path / "work")]) == 1  # a step failed
    summary = (out / f"gpu-{target}-summary.md").read_text()
    assert summary.startswith(f"# make gpu-{target}: Fake GPU (sm_90)")
    assert "| build | ok |" in summary and "| broken | FAIL |" in summary
    log = (out / f"gpu-{target}.log").read_text()
    assert "built\n" in log and log.rstrip().endswith(f"gpu-{target}: FAILED: broken")
    if target == "check":  # no training ran: its mIoUs show as missing
        assert "| GPU, torchrun, bf16 autocast | - | - |" in summary
    else:
        assert (out / "RESULTS.md").read_text() == (ROOT / "benchmarks" / "RESULTS.md").read_text()
