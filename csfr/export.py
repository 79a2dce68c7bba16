"""python -m csfr.export: a trained checkpoint as a file that runs without csfr (ONNX or torch.export).

    python -m csfr.export --checkpoint runs/demo/checkpoints/best.pt --format onnx --out model.onnx
    python -m csfr.export --checkpoint best.pt --format torch-export --out model.pt2

The exported graph takes `image`, float32 [B, 3, H, W] RGB in 0..255, and returns `logits`
[B, K, H, W] (argmax over K = the class ids); ImageNet normalisation is inside it. Batch, height and
width are dynamic. It is the network on one whole image: resizing to the config's eval.base_size,
sliding windows, scales and flips are left to the caller (csfr.load does all of them). The
AAM's gated_blend is recorded as plain torch operations (no csfr:: operator), so the file runs on
any device with onnxruntime or plain PyTorch. Class names, palette and the evaluation settings
travel with it as JSON: the ONNX metadata entry "csfr", or the extra file "csfr.json" of the .pt2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from csfr import api, cli
from csfr.data.transforms import MEAN, STD

FORMATS = ("onnx", "torch-export")
# the opsets torch.onnx.export(dynamo=True) writes; asked for a lower one it writes 18 without a word
ONNX_OPSETS = range(18, torch.onnx._constants.ONNX_MAX_OPSET + 1)
METADATA_KEY = "csfr"
EXTRA_FILE = "csfr.json"


class Deployable(nn.Module):
    """images float32 [B, 3, H, W] RGB 0..255 -> logits [B, K, H, W]: normalisation, then the network."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.from_numpy(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.from_numpy(STD).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model((image - self.mean) / self.std)


def metadata(predictor: api.Predictor) -> str:
    """What a runtime needs besides the graph, as JSON: the input/output contract, class names,
    palette, ignore index and the evaluation settings of the training config."""
    return json.dumps({"input": "image: float32 [B, 3, H, W], RGB, 0..255", "output": "logits: float32 [B, K, H, W]",
                       "class_names": list(predictor.class_names), "palette": predictor.palette.tolist(),
                       "ignore_index": predictor.ignore_index, "eval": predictor.eval_cfg})


def example_input(predictor: api.Predictor) -> torch.Tensor:
    """A batch of 2 (a batch of 1 would let torch.export specialise the batch size) at the
    config's eval crop size."""
    crop = predictor.eval_cfg["crop_size"]
    h, w = (crop, crop) if isinstance(crop, int) else crop
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255


def export_program(predictor: api.Predictor) -> torch.export.ExportedProgram:
    """The predictor's network (with normalisation) as a torch.export program, batch, height and
    width dynamic; on the CPU."""
    module = Deployable(predictor.model).cpu().eval()
    dynamic = torch.export.Dim.DYNAMIC
    return torch.export.export(module, (example_input(predictor),),
                               dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},))


def _write(out: Path, save) -> None:
    """Call save(temporary path) in out's folder, then rename: `out` is either complete or absent."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")  # torch.export.save wants its suffix
    try:
        save(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def export(predictor: api.Predictor, fmt: str, out: Path, opset: int | None = None) -> None:
    """Write the predictor as `fmt` ("onnx" or "torch-export") to `out`.

    Args:
        predictor: from csfr.load (its model is moved to the CPU).
        fmt: "onnx" (torch.onnx.export with dynamo=True; needs the onnx and onnxscript packages)
            or "torch-export" (torch.export.save; a .pt2 archive).
        out: the file to write (atomically).
        opset: ONNX opset version (default: the exporter's).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if opset is not None and opset not in ONNX_OPSETS:
        raise ValueError(f"--opset {opset} is not one the exporter writes: {ONNX_OPSETS[0]}..{ONNX_OPSETS[-1]} "
                         "(with a lower one it would silently write its own)")
    with torch.no_grad():
        program = export_program(predictor)
    if fmt == "torch-export":
        _write(out, lambda tmp: torch.export.save(program, tmp, extra_files={EXTRA_FILE: metadata(predictor)}))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # raised inside the exporter (torch 2.13)
        onnx_program = torch.onnx.export(program, input_names=["image"], output_names=["logits"],
                                         opset_version=opset, dynamo=True, verbose=False)
    onnx_program.model.metadata_props[METADATA_KEY] = metadata(predictor)
    _write(out, lambda tmp: onnx_program.save(tmp, external_data=False))


def _check_onnx_exporter() -> None:
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"--format onnx needs the {' and '.join(missing)} package(s): pip install onnx onnxscript")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csfr.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, metavar="PATH",
                   help="a checkpoint written by csfr.train (best.pt or iter_*.pt)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx: an ONNX model for onnxruntime and other runtimes (needs onnx and onnxscript); "
                        "torch-export: a torch.export .pt2 archive, loaded with torch.export.load")
    p.add_argument("--out", required=True, type=Path, metavar="FILE",
                   help="the file to write, e.g. model.onnx or model.pt2 (written under a temporary name, "
                        "then renamed)")
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help=f"ONNX opset version, {ONNX_OPSETS[0]}..{ONNX_OPSETS[-1]} (default: the exporter's "
                        "recommended one)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file name such as {args.out / 'model.onnx'}")
    if args.format == "onnx":
        _check_onnx_exporter()
    predictor = api.load(args.checkpoint, device="cpu")
    export(predictor, args.format, args.out, args.opset)
    print(f"wrote {args.out} ({args.format}): image float32 [B, 3, H, W] RGB 0..255 -> logits "
          f"[B, {predictor.num_classes}, H, W]")
    return 0


def entry() -> None:
    """The console script (and python -m): bad input ends with one line and exit status 2."""
    cli.run_main("csfr.export", main)


if __name__ == "__main__":
    entry()
