"""The operator benchmark script runs end to end and keeps one section per machine."""

import importlib.util
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
    """A benchmark module (benchmarks/ imports as a package from the repository root)."""
    return importlib.import_module(f"benchmarks.{name}")


def test_bench_ops_quick_writes_a_table(tmp_path):
    bench = load("bench_ops")
    out = tmp_path / "RESULTS.md"
    out.write_text("# Operator benchmark results\n\n## Some GPU\n\nkept as is\n")
    bench.main(["--quick", "--ops", "cac_loss", "class_centroids", "--out", str(out)])
    bench.main(["--quick", "--ops", "cac_loss", "--out", str(out)])
    text = out.read_text()
    assert "## Some GPU\n\nkept as is" in text
    assert text.count("(quick)\n") == 1  # the second run replaced its own section
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| cac_loss")]
    assert [row[2].strip() for row in rows] == ["eager", "compile", "cpu"] * 2  # random, then blocky labels
    assert [row[1].strip().rsplit(", ", 1)[1] for row in rows] == ["random"] * 3 + ["blocky"] * 3
    for row in rows:  # latency, back-to-back throughput and the ratio are measured numbers
        assert float(row[3]) > 0 and float(row[4]) > 0 and float(row[5]) > 0


def test_bytes_model():
    bench = load("bench_ops")
    import torch

    case = bench.Case("cac_loss", (2, 8, 4, 4, 3), torch.float32, torch.device("cpu"))
    assert case.bytes_moved() == 4 * (2 * 8 * 16 * 4) + 3 * (2 * 16 * 8)
    case = bench.Case("gated_blend", (2, 8, 4, 4, 3), torch.bfloat16, torch.device("cpu"))
    assert case.bytes_moved() == 11 * 2 * 8 * 16 * 2


def test_bench_train_compares_csfr_with_its_baseline(tmp_path):
    from runs import TINY

    bench = load("bench_train")
    assert bench.baseline_name("csfr_r50_d8") == "fcn_r50_d8"
    assert bench.baseline_name("csfr_pspnet_r101_d16") == "pspnet_r101_d16"
    out = tmp_path / "TRAIN.md"
    weights = ["model.options.w_intra=0.2", "model.options.w_inter=0.5"]
    sets = [arg for item in TINY + ["train.iters=2", *weights] for arg in ("--set", item)]
    bench.main([*sets, "--seeds", "0", "1", "--work-dir", str(tmp_path / "runs"), "--repeat", "2", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# Training proxy results") and "(CAC weights 0.2 / 0.5)" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith(("| csfr_r50_d8", "| fcn_r50_d8"))]
    per_seed, summary = rows[:4], rows[4:]
    assert [(r[0].strip(), r[1].strip()) for r in per_seed] == [("csfr_r50_d8", "0"), ("fcn_r50_d8", "0"),
                                                                ("csfr_r50_d8", "1"), ("fcn_r50_d8", "1")]
    assert len(summary) == 2 and all("±" in r[1] and float(r[3]) > 0 for r in summary)
    assert (tmp_path / "runs" / "seed1" / "csfr" / "checkpoints").is_dir()


def test_separability_of_perfectly_separated_features():
    import torch

    bench = load("bench_train")

    class OneHot(torch.nn.Module):
        """Features = a scaled one-hot of the true class: zero spread, so a huge ratio."""

        def features(self, images):
            return images[:, :2]

    class Scenes:
        num_classes, ignore_index = 2, 255

        def __len__(self):
            return 2

        def __getitem__(self, i):
            label = torch.zeros(8, 8, dtype=torch.long)
            label[:, 4:] = 1
            image = torch.stack([(label == 0).float(), (label == 1).float(), torch.zeros(8, 8)]).numpy()
            return {"image": image, "label": label.numpy(), "meta": {}}

    model = OneHot()
    model.eval = lambda: model
    assert bench.separability(model, Scenes(), torch.device("cpu")) > 1e3


def test_bench_ops_quick_writes_no_results_file(tmp_path, monkeypatch, capsys):
    bench = load("bench_ops")
    committed = tmp_path / "RESULTS.md"
    committed.write_text("# Operator benchmark results\n\n## A real machine\n\nmeasured\n")
    monkeypatch.setattr(bench, "RESULTS", str(committed))
    monkeypatch.setattr(bench.torch, "compile", lambda fn, **kwargs: fn)  # timings do not matter here
    bench.main(["--quick", "--ops", "gated_blend"])
    assert committed.read_text() == "# Operator benchmark results\n\n## A real machine\n\nmeasured\n"
    assert list(tmp_path.iterdir()) == [committed]
    assert "| gated_blend" in capsys.readouterr().out  # the smoke run still prints its table


def test_write_section_replaces_in_place_and_is_idempotent(tmp_path):
    bench = load("results_file")
    path = str(tmp_path / "R.md")
    bench.write_section(path, "a", "## a\n\nfirst\n", heading="# H")
    bench.write_section(path, "b", "## b\n\nsecond\n", heading="# H")
    expected = "# H\n\n## a\n\nfirst\n\n## b\n\nsecond\n"
    assert pathlib.Path(path).read_text() == expected
    for _ in range(2):  # rewriting either section, the last included, leaves the file as it was
        bench.write_section(path, "b", "## b\n\nsecond\n", heading="# H")
        bench.write_section(path, "a", "## a\n\nfirst\n", heading="# H")
    assert pathlib.Path(path).read_text() == expected
    bench.write_section(path, "a", "## a\n\nnew\n", heading="# H")
    assert pathlib.Path(path).read_text() == expected.replace("first", "new")


def test_bench_ops_keeps_the_cases_finished_before_it_stopped(tmp_path, monkeypatch):
    """A run killed at a time limit leaves the rows it measured, marked incomplete."""
    bench = load("bench_ops")
    real, calls = bench.run_case, []

    def second_case_is_killed(case, *args):
        calls.append(case.op)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a time limit's kill looks like from inside
        return real(case, *args)

    monkeypatch.setattr(bench, "run_case", second_case_is_killed)
    out = tmp_path / "RESULTS.md"
    try:
        bench.main(["--quick", "--ops", "cac_loss", "gated_blend", "--out", str(out)])
    except KeyboardInterrupt:
        pass
    text = out.read_text()
    assert "| cac_loss |" in text and "| gated_blend |" not in text
    assert "Incomplete: 1 of 3 cases measured so far." in text  # cac_loss on two label kinds, the blend


def test_blocky_labels_are_regions_of_one_class():
    bench = load("bench_ops")
    import torch

    case = bench.Case("cac_loss", (2, 4, 97, 97, 19), torch.float32, torch.device("cpu"), labels="blocky")
    _, labels = case.inputs()
    r = bench.REGION
    for i in range(0, 97, r):
        for j in range(0, 97, r):
            region = labels[:, i:i + r, j:j + r].reshape(2, -1)
            assert (region == region[:, :1]).all()  # one class (or ignore) per region
    ignored = (labels == bench.IGNORE).float().mean()
    assert 0.02 < ignored < 0.25 and len(labels[labels != bench.IGNORE].unique()) > 10
    _, random = bench.Case("cac_loss", (2, 4, 97, 97, 19), torch.float32, torch.device("cpu")).inputs()
    def changes(y):  # share of horizontal neighbours with different labels
        return float((y[:, :, 1:] != y[:, :, :-1]).float().mean())

    assert changes(labels) < 0.1 and changes(random) > 0.8


def test_profile_lists_where_the_time_goes(tmp_path):
    bench = load("bench_ops")
    out = tmp_path / "RESULTS.md"
    bench.main(["--quick", "--profile", "--ops", "class_centroids", "--labels", "random", "--out", str(out)])
    text = out.read_text()
    assert "Where the time goes (`--profile`" in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| class_centroids")
            and line.count("|") == 8 and "`" in line]
    impls = {row[2].strip() for row in rows}
    assert impls == {"compile", "cpu"}  # eager and index_add_ are not profiled
    cpu_ops = [row[3].strip("` ") for row in rows if row[2].strip() == "cpu"]
    assert any(name.startswith("csfr::") for name in cpu_ops), cpu_ops  # the fused kernel shows by name
    assert all(float(row[4]) > 0 and float(row[5]) > 0 for row in rows)
    totals = {line.split("|")[3].strip(): float(line.split("|")[5]) for line in text.splitlines()
              if line.startswith("| class_centroids") and "| all operators |" in line}
    assert totals.keys() == {"compile", "cpu"}
    for impl, total in totals.items():  # all of them together: at least the listed ones
        assert total >= sum(float(row[4]) for row in rows if row[2].strip() == impl) - 2e-3  # 3-decimal rounding


def test_bench_ops_times_the_host_cost_shape_without_targets(monkeypatch, tmp_path):
    """The full sweep adds HOST_SHAPE (what a call costs the host) after the issue's shapes; the targets
    are checked at the issue's shapes only."""
    bench = load("bench_ops")
    seen = []
    monkeypatch.setattr(bench, "run_case", lambda case, *a: seen.append(case.shape) or [])
    monkeypatch.setattr(bench, "copy_bandwidth", lambda *a: 1.0)
    bench.main(["--ops", "gated_blend", "--out", str(tmp_path / "R.md")])
    assert seen == [*bench.SHAPES, bench.HOST_SHAPE]
    assert {c["shape"] for c in bench.check_targets([])} == set(bench.SHAPES)


@pytest.mark.cuda
def test_host_profile_on_a_gpu_lists_the_hosts_side():
    """At the host-cost shape a call is all host: `top_kernels(host=True)` lists what the host spends its
    time on (operators, CUDA runtime calls), not the GPU kernels the default lists."""
    from csfr.profiling import top_kernels

    x = torch.rand(2, 8, 64, device="cuda", requires_grad=True)

    def run():
        (x.exp() * 2).sum().backward()

    device = torch.device("cuda")
    host, host_ms = top_kernels(run, device, top=20, host=True)
    kernels, _ = top_kernels(run, device, top=20)
    host_names = {row["name"] for row in host}
    assert "aten::exp" in host_names and host_ms > 0
    assert not host_names & {row["name"] for row in kernels}  # no kernel among the host's rows
    assert any(name.startswith("cuda") for name in host_names)  # the launches (cudaLaunchKernel...)


def test_kernel_work_counts_what_the_kernels_do(tmp_path, monkeypatch):
    """benchmarks/kernel_work.py's counts: zero for no kernel, the same for the same kernel run twice under two
    schedules (A/A), and what the kernels' structure predicts: segment_sum folds blocky labels by warp
    reductions (collectives, few atomics) and random ones by one atomic per lane and channel."""
    from csfr.ops import emulation

    if emulation.why_unavailable() is not None:
        pytest.skip(emulation.why_unavailable())
    work = load("kernel_work")
    emulation.load()
    assert work._counts(lambda: None) == (0, 0)
    shape = (1, 40, 20, 20, 5)
    first = work.measure(shape, "blocky")
    emulation.set_schedule_seed(7)
    assert work.measure(shape, "blocky") == first
    random = work.measure(shape, "random")
    elements = 40 * 20 * 20
    collectives, atomics = first["segment_sum"]
    assert collectives > 0 and atomics < 0.2 * elements
    assert random["segment_sum"][1] > 0.5 * elements  # ~ one per counted element (10 % ignored)
    out = tmp_path / "results.md"
    monkeypatch.setattr(work, "SHAPES", [shape])
    work.main(["--out", str(out), "--title", "work"])
    assert "## work" in out.read_text() and "| segment_sum | 1x40x20x20, K=5 | blocky |" in out.read_text()
