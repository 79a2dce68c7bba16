"""python -m csfr.export: ONNX and torch.export files that run without csfr and match the eager model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from runs import checkpoint_of

import csfr
from csfr.export import EXTRA_FILE, METADATA_KEY, Deployable, entry, export_program, parser


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    checkpoint_of(path, "eval.crop_size=[32,32]")
    return path


def eager_logits(ckpt, image):
    return Deployable(csfr.load(ckpt, device="cpu").model).eval()(image).detach()


def images():
    """Other batch sizes and image sizes than the example the export traced (2 x 32 x 32)."""
    gen = torch.Generator().manual_seed(3)
    return [torch.rand(1, 3, 40, 48, generator=gen) * 255, torch.rand(3, 3, 24, 56, generator=gen) * 255]


def export_cli(*args):
    return subprocess.run([sys.executable, "-m", "csfr.export", *map(str, args)], capture_output=True, text=True,
                          check=False)


def test_exported_graph_records_no_csfr_operator(ckpt):
    predictor = csfr.load(ckpt, device="cpu")
    assert predictor.model.head.aam.backend == "auto"  # resolves to the C++ kernel when run eagerly here
    targets = {str(node.target) for node in export_program(predictor).graph.nodes if node.op == "call_function"}
    assert not [t for t in targets if "csfr" in t], targets
    assert any("sigmoid" in t for t in targets)  # the AAM gate, as plain torch


def test_torch_export_program_runs_in_a_process_that_never_imports_csfr(ckpt, tmp_path):
    out = tmp_path / "model.pt2"
    proc = export_cli("--checkpoint", ckpt, "--format", "torch-export", "--out", out)
    assert proc.returncode == 0, proc.stderr
    inputs = images()
    torch.save(inputs, tmp_path / "inputs.pt")
    script = f"""
import json, sys, torch
extra = {{"{EXTRA_FILE}": ""}}
program = torch.export.load({str(out)!r}, extra_files=extra)
outputs = [program.module()(x) for x in torch.load({str(tmp_path / 'inputs.pt')!r})]
torch.save(outputs, {str(tmp_path / 'outputs.pt')!r})
assert not [m for m in sys.modules if m.split('.')[0] == 'csfr'], 'csfr was imported'
print(json.loads(extra["{EXTRA_FILE}"])["class_names"][0])
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "pair0_stripes0"
    for x, got in zip(inputs, torch.load(tmp_path / "outputs.pt")):
        want = eager_logits(ckpt, x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * want.abs().max().item())


def test_onnx_matches_eager_in_onnxruntime(ckpt, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "model.onnx"
    proc = export_cli("--checkpoint", ckpt, "--format", "onnx", "--out", out)
    assert proc.returncode == 0, proc.stderr
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert meta["class_names"] == list(csfr.load(ckpt, device="cpu").class_names)
    for x in images():
        got = session.run(["logits"], {"image": x.numpy()})[0]
        want = eager_logits(ckpt, x).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_bad_input_is_one_line_and_exit_2(ckpt, tmp_path, monkeypatch, capsys):
    for args, message in [(("--checkpoint", tmp_path / "none.pt", "--out", tmp_path / "m.pt2"), "does not exist"),
                          (("--checkpoint", ckpt, "--out", tmp_path), "is a folder")]:
        monkeypatch.setattr(sys, "argv", ["csfr.export", *map(str, args), "--format", "torch-export"])
        with pytest.raises(SystemExit) as exit_:
            entry()
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not list(tmp_path.glob(".*tmp*"))


def test_help_explains_every_flag():
    assert all(action.help for action in parser()._actions)
    text = parser().format_help()
    for flag in ("--checkpoint", "--format", "onnx", "torch-export", "--out", "--opset"):
        assert flag in text
