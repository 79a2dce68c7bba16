"""Benchmark one training step of CSFR against its FCN baseline at Cityscapes scale.

A step is what training does per batch: forward with the losses (CE, auxiliary CE and, for CSFR,
the CAC loss), backward and an SGD step, under autocast. Both models are built from the Cityscapes
preset (dilated ResNet-101, output stride 8, deep stem, multi-grid), get the same random batch
(images and blocky labels with an ignore region) and are timed as the median of --steps steps after
--warmup untimed ones; peak memory is the most one step holds beyond the model, its gradients, the
optimizer state and the batch. The table, with the machine's name, is written into a section of
benchmarks/RESULTS.md.

    python -m benchmarks.bench_train_step                                  # GPU: 769x769, batch 2, bf16
    python -m benchmarks.bench_train_step --device cpu --size 65 --steps 1 --out /tmp/r.md   # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch

from benchmarks.bench_ops import RESULTS
from benchmarks.results_file import write_section
from csfr import configs
from csfr.engine.builders import build_model
from csfr.engine.precision import AMP_MODES, autocast
from csfr.profiling import device_description, median_ms, peak_extra_bytes

NUM_CLASSES = 19
IGNORE = 255


def make_batch(batch: int, size: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised random images [B,3,S,S] and labels [B,S,S]: one class per 32x32 block (labels of real
    scenes come in regions), with the bottom eighth ignored."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=gen)
    blocks = -(-size // 32)
    labels = torch.randint(0, NUM_CLASSES, (batch, blocks, blocks), generator=gen)
    labels = labels.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, :size, :size].contiguous()
    labels[:, size - size // 8:] = IGNORE
    return images.to(device), labels.to(device)


def train_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, amp: str):
    """A closure running one training step (forward with losses, backward, SGD with momentum)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)

    def step():
        with autocast(images.device, amp):
            losses = model(images, labels)["losses"]
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, as in a training loop

    return step


def measure(name: str, args, device: torch.device) -> dict:
    """Median step time and peak extra memory of model `name`."""
    config = configs.resolve(args.config, [*args.overrides, f"model.name={name}", f"train.backend={args.backend}"])
    torch.manual_seed(0)
    model = build_model(config, NUM_CLASSES).to(device).train()
    images, labels = make_batch(args.batch, args.size, device)
    step = train_step(model, images, labels, args.amp)
    ms = median_ms(step, device, args.steps, warmup=args.warmup)
    mem = peak_extra_bytes(step, device)
    print(f"  {name:16s} {ms:9.1f} ms/step", flush=True)
    return {"model": name, "ms": ms, "mem": mem}


def markdown(rows: list[dict], title: str, args) -> str:
    """The results section: one row per model, then CSFR's cost over the baseline."""
    lines = [f"## {title}", "",
             (f"{datetime.date.today().isoformat()}, torch {torch.__version__}; preset `{args.config}` models, "
              f"{args.size}x{args.size} crops, batch {args.batch}, autocast {args.amp}, backend {args.backend}; "
              f"forward with losses + backward + SGD step, median of {args.steps} steps after {args.warmup} "
              f"warm-up steps. Command: `python -m benchmarks.bench_train_step {' '.join(sys.argv[1:])}`"),
             "", "| model | median ms/step | images/s | peak extra MB |", "|---|---:|---:|---:|"]
    for row in rows:
        mem = "n/a" if row["mem"] is None else f"{row['mem'] / 2**20:.0f}"
        lines.append(f"| {row['model']} | {row['ms']:.1f} | {1e3 * args.batch / row['ms']:.1f} | {mem} |")
    if len(rows) == 2:
        lines += ["", f"{rows[0]['model']} / {rows[1]['model']} step time: x{rows[0]['ms'] / rows[1]['ms']:.2f}"]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where to train (default cuda)")
    p.add_argument("--models", nargs="+", default=["csfr_r101_d8", "fcn_r101_d8"],
                   help="models to time; with two, the table adds the first's step time over the second's "
                        "(default csfr_r101_d8 fcn_r101_d8)")
    p.add_argument("--config", default="cityscapes", help="preset whose model options are used (default cityscapes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as for python -m csfr.train (repeatable)")
    p.add_argument("--size", type=int, default=769, help="square crop size in pixels (default 769)")
    p.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    p.add_argument("--amp", choices=AMP_MODES, default="bfloat16", help="autocast dtype (default bfloat16)")
    p.add_argument("--backend", default="auto", help="csfr operator backend (default auto)")
    p.add_argument("--steps", type=int, default=20, help="timed steps; the median is kept (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--out", default=RESULTS,
                   help="markdown file whose section for this machine is (re)written (default benchmarks/RESULTS.md)")
    args = p.parse_args(argv)
    if args.size < 33 or args.batch < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--size must be >= 33, --batch and --steps >= 1, --warmup >= 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_train_step: --device cuda but torch sees no CUDA device")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size, as in training
    title = f"Training step: {device_description(device)}"
    print(title, flush=True)
    rows = [measure(name, args, device) for name in args.models]
    section = markdown(rows, title, args)
    write_section(args.out, title, section)
    print(section)


if __name__ == "__main__":
    main()
