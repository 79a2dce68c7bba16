"""The operator benchmark script runs end to end and keeps one section per machine."""

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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
    assert [row[2].strip() for row in rows] == ["eager", "compile", "cpu"]
    for row in rows:
        assert float(row[3]) > 0 and float(row[4]) > 0  # time and ratio are measured numbers


def test_bytes_model():
    bench = load("bench_ops")
    import torch

    case = bench.Case("cac_loss", (2, 8, 4, 4, 3), torch.float32, torch.device("cpu"))
    assert case.bytes_moved() == 4 * (2 * 8 * 16 * 4) + 3 * (2 * 16 * 8)
    case = bench.Case("gated_blend", (2, 8, 4, 4, 3), torch.bfloat16, torch.device("cpu"))
    assert case.bytes_moved() == 11 * 2 * 8 * 16 * 2
