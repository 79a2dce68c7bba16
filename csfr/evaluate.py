"""python -m csfr.evaluate: score a checkpoint on a split, optionally writing its predictions.

    python -m csfr.evaluate --checkpoint runs/synthetic/checkpoints/best.pt
    python -m csfr.evaluate --config cityscapes --checkpoint best.pt --set eval.scales=[0.5,0.75,1.0,1.25,1.5,1.75] --flip
    python -m csfr.evaluate --config cityscapes --checkpoint best.pt --split test --out results --format cityscapes

Runs distributed under torchrun (each process scores a share; the confusion matrix is summed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from csfr import cli, configs
from csfr.engine import checkpoint, distributed
from csfr.engine.builders import build_datasets, build_model
from csfr.engine.evaluator import FORMATS, PredictionWriter, evaluate
from csfr.engine.metrics import table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csfr.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, metavar="PATH",
                   help="a checkpoint written by csfr.train (iter_*.pt or best.pt)")
    cli.add_config_flags(p, default=None)
    p.add_argument("--split", default=None, help="split to score (default: the config's data.val_split)")
    p.add_argument("--mode", choices=("whole", "slide"), default=None,
                   help="whole-image or sliding-window inference (sets eval.mode)")
    p.add_argument("--scales", type=float, nargs="+", default=None, metavar="S",
                   help="test scales, e.g. 0.5 0.75 1.0 1.25 1.5 1.75 (sets eval.scales)")
    p.add_argument("--flip", action="store_true", help="also average horizontally flipped inputs (eval.flip)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write every prediction here (see --format)")
    p.add_argument("--format", choices=FORMATS, default="color",
                   help="color: predictions as palette PNGs of class ids (pred/), overlays on the image "
                        "(overlay/) and panels input | ground truth | prediction | errors (panel/); "
                        "cityscapes: test-server PNGs of official label ids, named after the images")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="where to save the scores (default: eval_<dataset>_<split>.json next to the checkpoint, "
                        "or in --out)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per rank")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    state = checkpoint.read_trained(args.checkpoint)
    config = cli.resolve(args, base=state["config"])
    config["model"]["pretrained"] = None  # the checkpoint holds every weight
    if args.format == "cityscapes" and config["data"]["dataset"] != "cityscapes":
        raise ValueError(f"--format cityscapes writes Cityscapes label ids and needs the cityscapes dataset, but "
                         f"the config's data.dataset is {config['data']['dataset']!r}; use --format color")
    ev = config["eval"]
    ev.update({k: v for k, v in (("mode", args.mode), ("scales", args.scales)) if v is not None})
    ev["flip"] = ev["flip"] or args.flip
    if args.split is not None:
        config["data"]["val_split"] = args.split
    configs.validate(config)  # the flags' values too (--scales in range), before any work
    if args.print_config:
        print(json.dumps(config, indent=2))
        return 0
    ctx = distributed.init(config["train"]["device"])
    _, dataset = build_datasets(config, train=False)
    trained, names = state.get("classes", {}).get("names"), list(dataset.class_names)
    if trained is not None and list(trained) != names:
        if len(trained) != len(names):
            detail = f"{len(trained)} classes, but {dataset.name} {dataset.split} has {len(names)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(trained, names)) if a != b)
            detail = f"class {i} named {trained[i]!r}, but the dataset names it {names[i]!r}"
        raise ValueError(f"checkpoint {args.checkpoint} was trained with {detail}: its scores would compare "
                         "different classes")
    model = build_model(config, dataset.num_classes)
    checkpoint.load_weights(model, state["model"], str(args.checkpoint))
    model.to(ctx.device)
    writer = None
    if args.out is not None:
        writer = PredictionWriter.for_dataset(args.out, dataset, args.format)  # ranks write different images
    result = evaluate(model, dataset, ctx, ev, config["train"]["amp"], writer, workers=args.workers)
    if ctx.is_main:
        print(f"{dataset.name} {dataset.split}, {len(dataset)} images, {ev['mode']} inference, "
              f"scales {ev['scales']}{' + flip' if ev['flip'] else ''}:")
        print(table(result))
        where = args.json or (args.out or args.checkpoint.parent) / f"eval_{dataset.name}_{dataset.split}.json"
        where.parent.mkdir(parents=True, exist_ok=True)
        configs.save({"checkpoint": str(args.checkpoint), "eval": ev, **result}, where)
        print(f"scores saved to {where}")
    distributed.shutdown()
    return 0


def entry() -> None:
    """The console script (and python -m): bad input ends with one line and exit status 2."""
    cli.run_main("csfr.evaluate", main)


if __name__ == "__main__":
    entry()
