"""Measured proxy for the paper's claim, on the synthetic scenes: CSFR vs its FCN baseline.

Both models are trained from the same preset with the same seeds and number of iterations
(the baseline is the same network without CSFLM, CAC loss and AAM), then compared on:

- mIoU on the validation scenes (per seed, and mean ± standard deviation);
- separability of the features the classifier sees: the mean distance between class
  centroids divided by the mean intra-class spread (root mean squared distance to the own
  centroid), over all validation pixels;
- training-step time (forward + backward + SGD step on one batch), the cost of CAC + AAM.

Whichever wins is reported. The results go to a section of benchmarks/TRAIN_RESULTS.md named
after the machine.

    python -m benchmarks.bench_train                       # the synthetic preset as it is
    python -m benchmarks.bench_train --set train.iters=300 # shorter
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

from benchmarks.results_file import write_section
from csfr import configs
from csfr.data import collate
from csfr.engine.builders import build_datasets, build_model
from csfr.engine.distributed import pick_device
from csfr.engine.trainer import Trainer
from csfr.profiling import device_description, median_ms
from study.features import feature_report


def baseline_name(name: str) -> str:
    """csfr_r50_d8 -> fcn_r50_d8, csfr_pspnet_r50_d8 -> pspnet_r50_d8."""
    rest = name.removeprefix("csfr_")
    return rest if rest.split("_")[0] in ("deeplabv3", "pspnet") else f"fcn_{rest}"


def separability(model, dataset, device) -> float:
    """Mean inter-centroid distance / mean intra-class RMS spread of model.features over `dataset`."""
    return feature_report(model, dataset, device)["classifier input"]["separability"]


def step_ms(config: dict, device: torch.device, repeat: int) -> float:
    """Median time of one training step on one batch of the preset's size."""
    train_set, _ = build_datasets(config)
    torch.manual_seed(0)
    model = build_model(config, train_set.num_classes).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batch = collate([train_set[i] for i in range(config["train"]["batch_size"])])
    images, labels = batch["image"].to(device), batch["label"].to(device)

    def step():
        loss = sum(model(images, labels)["losses"].values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return median_ms(step, device, repeat, warmup=3)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="synthetic", help="preset to train (default synthetic)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as for python -m csfr.train (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="training seeds; both models are trained once per seed (default 0 1 2)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench_train"),
                   help="where the runs are trained (subfolders seed<N>/csfr and seed<N>/baseline)")
    p.add_argument("--repeat", type=int, default=20, help="timed training steps per model (median kept)")
    p.add_argument("--out", default=str(Path(__file__).with_name("TRAIN_RESULTS.md")),
                   help="markdown file whose machine section is (re)written")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    csfr_name = configs.resolve(args.config, args.overrides)["model"]["name"]
    if not csfr_name.startswith("csfr_"):
        raise SystemExit(f"--config must describe a CSFR model, got {csfr_name}")
    models = (("csfr", csfr_name), ("baseline", baseline_name(csfr_name)))

    def config_for(name: str, seed: int) -> dict:
        return configs.resolve(args.config, [*args.overrides, f"model.name={name}", f"train.seed={seed}"])

    device = pick_device(config_for(csfr_name, 0)["train"]["device"])
    runs = []  # one row per (seed, model); the seed also draws the synthetic scenes
    for seed in args.seeds:
        for label, name in models:
            trainer = Trainer(config_for(name, seed), args.work_dir / f"seed{seed}" / label, progress=True)
            result = trainer.run()
            runs.append({"model": name, "seed": seed, "mIoU": result["scores"]["mIoU"],
                         "sep": separability(trainer.model, trainer.val_set, device)})
            del trainer  # its DataLoader workers must not run while steps are timed
            print(f"seed {seed} {name}: mIoU {runs[-1]['mIoU']}, separability {runs[-1]['sep']:.3f}")
    step = {name: step_ms(config_for(name, args.seeds[0]), device, args.repeat) for _, name in models}

    def mean_std(name: str, key: str) -> tuple[float, float]:
        values = torch.tensor([r[key] for r in runs if r["model"] == name], dtype=torch.float64)
        return float(values.mean()), float(values.std()) if len(values) > 1 else 0.0

    title = device_description(device)
    reference = config_for(csfr_name, 0)
    train, options = reference["train"], reference["model"]["options"]
    lines = [f"## {title}", "",
             (f"{datetime.date.today().isoformat()}, torch {torch.__version__}; preset `{args.config}` "
              f"{''.join('--set ' + o + ' ' for o in args.overrides)}(CAC weights {options['w_intra']:g} / "
              f"{options['w_inter']:g}): {train['iters']} iterations, batch "
              f"{train['batch_size']}, seeds {args.seeds} (each seed also draws the scenes), the same for both "
              f"models. Command: `python -m benchmarks.bench_train {' '.join(sys.argv[1:])}`"),
             "", "| model | seed | mIoU | separability (inter / intra) |", "|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['seed']} | {r['mIoU']:.2f} | {r['sep']:.3f} |" for r in runs]
    lines += ["", "| model | mean mIoU | mean separability | train step ms (median) |", "|---|---:|---:|---:|"]
    for _, name in models:
        (miou, miou_sd), (sep, sep_sd) = mean_std(name, "mIoU"), mean_std(name, "sep")
        lines.append(f"| {name} | {miou:.2f} ± {miou_sd:.2f} | {sep:.3f} ± {sep_sd:.3f} | {step[name]:.1f} |")
    (c_miou, _), (b_miou, _) = mean_std(csfr_name, "mIoU"), mean_std(models[1][1], "mIoU")
    (c_sep, _), (b_sep, _) = mean_std(csfr_name, "sep"), mean_std(models[1][1], "sep")
    lines += ["", (f"CSFR - baseline: {c_miou - b_miou:+.2f} mIoU (mean over seeds), separability x{c_sep / b_sep:.2f}, "
                   f"step time x{step[csfr_name] / step[models[1][1]]:.2f}; ± is the standard deviation over seeds.")]
    write_section(args.out, title, "\n".join(lines) + "\n", heading="# Training proxy results (CSFR vs baseline)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
