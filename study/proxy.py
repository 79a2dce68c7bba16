"""The frozen-feature proxy: heads trained on cached features of a pretrained, frozen backbone.

    python -m csfr.train --config proxy_pretrain --work-dir runs/proxy/pretrain        # once, ~7 min
    python -m study.proxy run --backbone runs/proxy/pretrain/checkpoints/best.pt --seeds 0-11
    python -m study.proxy table --backbone runs/proxy/pretrain/checkpoints/best.pt --out benchmarks/TRAIN_RESULTS.md
    python -m study.proxy run --end-to-end --arms baseline csfr --seeds 0-3 --backbone ...   # unfrozen

The backbone is pretrained on a label set disjoint from the proxy's (`proxy_pretrain`), then its
stage-4 features of the proxy's training images (and their mirror images) and validation images
are computed once and cached. Each run trains only what sits after the backbone (head, CSFLM,
AAM, classifier) from the `proxy` preset, so a run takes seconds to minutes and 12 seeds an arm
are affordable. Runs are paired by seed: the seed draws the initial weights (every layer an arm
shares with the baseline starts from the baseline's), the data order and the dropout stream.
Each finished run is a JSON file in the work folder, so `run` resumes; `table` compares every arm
with its reference (docs/study.md, "The fair test").
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks.results_file import write_section
from csfr import configs, models
from csfr.data import build_dataset
from csfr.engine.builders import eval_transform
from csfr.engine.checkpoint import read_trained
from csfr.engine.metrics import confusion_matrix, scores
from csfr.engine.schedule import poly_scheduler
from csfr.engine.trainer import Trainer
from csfr.losses import ClassAwareConsistencyLoss
from csfr.models.csfr import CACOnS
from study.stats import FIRST_LOOK, holm, paired


@dataclass(frozen=True)
class Arm:
    """One setting: a model, options over the preset's, and the proxy's own switches."""

    key: str
    label: str
    model: str
    options: tuple[tuple[str, object], ...] = ()
    cac_on_input: bool = False  # the CAC loss on the classifier's input X (a baseline has no S)
    balanced_ce: bool = False   # cross-entropy weighted by median frequency / class frequency
    stream: int = 0             # another data order and dropout stream, same initial weights


BASELINE, CSFR = "fcn_r50_d8", "csfr_r50_d8"
ARMS = {arm.key: arm for arm in (
    Arm("baseline", "FCN baseline", BASELINE),
    Arm("aa", "A/A control: the baseline on another data-order and dropout stream", BASELINE, stream=1),
    Arm("wide", "positive control: the baseline with a head twice as wide", BASELINE, (("head_channels", 128),)),
    Arm("balanced", "class-balanced cross-entropy", BASELINE, balanced_ce=True),
    Arm("cac_input", "CAC loss on the classifier's input (no CSFLM, no AAM)", BASELINE, cac_on_input=True),
    Arm("aam", "CSFLM + AAM, CAC loss off (weight 0)", CSFR, (("w_intra", 0.0), ("w_inter", 0.0))),
    Arm("csfr", "full CSFR, per-image centroids (the presets')", CSFR),
    Arm("csfr_batch", "full CSFR, batch centroids", CSFR, (("cac_centroids", "batch"),)),
    Arm("csfr_head", "full CSFR, the AAM fusing S with the head's X (the old default)", CSFR,
        (("aam_fuses", "head"),)),
    *(Arm(f"csfr_w{w:g}", f"full CSFR, CAC weight {w:g} ({w / 0.02:g}x the presets')", CSFR,
          (("w_intra", w), ("w_inter", w))) for w in (0.1, 0.5)),
)}
# (arm, reference): the controls, each method against the baseline, and the loss on minus off
CONTRASTS = [("aa", "baseline"), ("wide", "baseline"), ("balanced", "baseline"), ("cac_input", "baseline"),
             ("aam", "baseline"), ("csfr", "baseline"), ("csfr_batch", "baseline"), ("csfr_head", "baseline"),
             ("csfr", "aam"), ("csfr_batch", "aam"), ("csfr_w0.1", "aam"), ("csfr_w0.5", "aam"),
             ("csfr", "csfr_head")]


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def write_atomic(path: Path, save) -> None:
    """save(tmp) writes the file; it appears under `path` whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    save(tmp)
    os.replace(tmp, path)


# -- the cache ---------------------------------------------------------------------------------

def frozen_backbone(checkpoint: Path) -> torch.nn.Module:
    """The backbone of a csfr.train checkpoint, in eval mode, without gradients."""
    state = read_trained(checkpoint)
    config, classes, name = state["config"], state["classes"]["names"], state["config"]["model"]["name"]
    options = models.registry.used_options(name, config["model"]["options"])  # a baseline's: no CSFR options
    model = models.build(name, len(classes), **{**options, "pretrained": None})
    prefix = "backbone."
    model.backbone.load_state_dict({k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)})
    return model.backbone.eval().requires_grad_(False)


def encode(backbone, dataset, mirror: bool) -> dict:
    """Stage-4 features (fp16) and labels (uint8; 255 = ignore) of every item (and its mirror image)."""
    feats, labels = [], []
    with torch.no_grad():
        for i in tqdm(range(len(dataset)), desc=f"cache {dataset.split}", leave=False, disable=None):
            item = dataset[i]
            image, label = torch.from_numpy(item["image"])[None], torch.from_numpy(item["label"])[None]
            views = [(image, label), (image.flip(-1), label.flip(-1))] if mirror else [(image, label)]
            for img, lab in views:
                feats.append(backbone(img)[1].half())
                labels.append(lab.to(torch.uint8))
    return {"c4": torch.cat(feats), "labels": torch.cat(labels)}


def cached_features(backbone_path: Path, config: dict, work_dir: Path) -> dict:
    """{"train": {c4, labels}, "val": {...}, "class_names"}; computed once per backbone and data config."""
    data = config["data"]
    key = fingerprint(file_digest(backbone_path), data["options"], data["val_options"], config["train"]["seed"])
    path = work_dir / f"cache_{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    backbone = frozen_backbone(backbone_path)
    seed, transform = config["train"]["seed"], eval_transform(config)
    train = build_dataset(data["dataset"], data["root"], data["train_split"], transform=transform, seed=seed,
                          **data["options"])
    val = build_dataset(data["dataset"], data["root"], data["val_split"], transform=transform, seed=seed,
                        **configs.merge(data["options"], data["val_options"]))
    cache = {"train": encode(backbone, train, mirror=True), "val": encode(backbone, val, mirror=False),
             "class_names": list(train.class_names), "backbone": str(backbone_path)}
    work_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(cache, tmp))
    return cache


# -- one run -----------------------------------------------------------------------------------

def copy_matching(model: torch.nn.Module, source: dict, rename=lambda key: key, skip: tuple[str, ...] = ()) -> None:
    """Copies into `model` every tensor of `source` (a state_dict) under rename(key) whose shape
    fits, leaving keys that start with one of `skip` alone."""
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            origin = rename(key)
            if not key.startswith(skip) and origin in source and source[origin].shape == tensor.shape:
                tensor.copy_(source[origin])


def build_arm(arm: Arm, config: dict, num_classes: int, seed: int) -> torch.nn.Module:
    """The arm's model; layers it shares with the baseline built under `seed` start from its weights."""
    options = {**config["model"]["options"], "backend": config["train"]["backend"]}
    torch.manual_seed(seed)
    reference = models.build(BASELINE, num_classes, **options).state_dict()
    torch.manual_seed(seed)
    model = models.build(arm.model, num_classes, **{**options, **dict(arm.options)})
    # CSFR keeps the baseline head as head.head
    copy_matching(model, reference, lambda key: key.replace("head.head.", "head.", 1) if model.is_csfr else key)
    return model


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Median frequency balancing: median(f) / f_k over the training pixels (1 for absent classes)."""
    counts = torch.bincount(labels[labels != 255].long().flatten(), minlength=num_classes).double()
    freq = counts / counts.sum()
    weights = torch.where(counts > 0, freq[counts > 0].median() / freq.clamp_min(1e-12), 1.0)
    return weights.float()


def train_run(arm: Arm, seed: int, config: dict, cache: dict) -> dict:
    """Trains one arm under one seed on the cached features; returns its validation scores."""
    train, names = config["train"], cache["class_names"]
    k, o = len(names), config["model"]["options"]
    model = build_arm(arm, config, k, seed).train()
    params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    optimizer = torch.optim.SGD(params, lr=train["lr"] * train["head_lr_mult"], momentum=train["momentum"],
                                weight_decay=train["weight_decay"])
    schedule = poly_scheduler(optimizer, train)
    cac_input = None
    if arm.cac_on_input:
        loss = ClassAwareConsistencyLoss(k, delta_v=o["delta_v"], delta_d=o["delta_d"], w_intra=o["w_intra"],
                                         w_inter=o["w_inter"], backend=train["backend"], centroids=o["cac_centroids"])
        cac_input = CACOnS(loss, model.head.channels, normalize=o["cac_normalize"])
    feats, labels = cache["train"]["c4"], cache["train"]["labels"]
    weight = class_weights(labels, k) if arm.balanced_ce else None
    order = torch.Generator().manual_seed(seed * 1000 + arm.stream)
    torch.manual_seed(seed * 1000 + arm.stream)  # dropout
    batch, queue = train["batch_size"], torch.empty(0, dtype=torch.long)
    start = time.perf_counter()
    for _ in range(train["iters"]):
        if len(queue) < batch:
            queue = torch.cat([queue, torch.randperm(len(feats), generator=order)])
        index, queue = queue[:batch], queue[batch:]
        c4, y = feats[index].float(), labels[index].long()
        logits, z, s = model.decode(c4, y.shape[-2:])
        loss = F.cross_entropy(logits, y, weight=weight, ignore_index=255)
        if s is not None:
            loss = loss + sum(model.head.cac(s, y).values())
        if cac_input is not None:
            loss = loss + sum(cac_input(z, y).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    result = evaluate(model, cache["val"], names)
    return {"arm": arm.key, "seed": seed, "mIoU": result["mIoU"],
            "IoU": {name: c["IoU"] for name, c in result["per_class"].items()},
            "train_seconds": round(seconds, 1), "threads": torch.get_num_threads()}


def evaluate(model, val: dict, names: list[str], batch: int = 32) -> dict:
    model.eval()
    cm = torch.zeros(len(names), len(names), dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(val["c4"]), batch):
            y = val["labels"][i:i + batch].long()
            logits = model.decode(val["c4"][i:i + batch].float(), y.shape[-2:])[0]
            cm += confusion_matrix(logits.argmax(1), y, len(names))
    return scores(cm, names)


# -- end to end --------------------------------------------------------------------------------

def backbone_weights(checkpoint: Path, work_dir: Path) -> Path:
    """The pretraining checkpoint's backbone as a weights file `model.pretrained` loads."""
    path = work_dir / f"backbone_{file_digest(checkpoint)}.pth"
    if not path.exists():
        work_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: torch.save(frozen_backbone(checkpoint).state_dict(), tmp))
    return path


def end_to_end_run(arm: Arm, seed: int, config: dict, weights: Path, folder: Path) -> dict:
    """The whole network trained with csfr.train's Trainer from the pretrained backbone (unfrozen,
    with the training augmentation and the auxiliary head); the head's initial weights are the
    arm's `build_arm` ones, so arms stay paired by seed."""
    if arm.cac_on_input or arm.balanced_ce or arm.stream:
        raise ValueError(f"arm {arm.key} has no end-to-end form (it changes the proxy's own loop)")
    cfg = json.loads(json.dumps(config))
    cfg["model"].update(name=arm.model, pretrained=str(weights))
    cfg["model"]["options"].update({"aux_weight": 0.4, **dict(arm.options)})
    cfg["train"]["seed"] = seed
    start = time.perf_counter()
    resume = "auto" if list((folder / "checkpoints").glob("iter_*.pt")) else None
    trainer = Trainer(cfg, folder, resume=resume, progress=False)
    if resume is None:  # the pretrained backbone stays; the rest starts from the arm's shared weights
        initial = build_arm(arm, cfg, trainer.train_set.num_classes, seed).state_dict()
        copy_matching(trainer.model, initial, skip=("backbone.",))
    result = trainer.run()["scores"]
    return {"arm": arm.key, "seed": seed, "mIoU": result["mIoU"],
            "IoU": {name: c["IoU"] for name, c in result["per_class"].items()},
            "train_seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads()}


# -- the study ---------------------------------------------------------------------------------

def run_path(runs: Path, arm: Arm, seed: int, key: str) -> Path:
    return runs / f"{arm.key}_s{seed}_{key}.json"


def config_key(config: dict, backbone: Path) -> str:
    """What a stored run depends on besides its arm and seed: the backbone and every config field."""
    return fingerprint(file_digest(backbone), {k: config[k] for k in ("model", "data", "train")})


def results(runs: Path, key: str) -> dict[str, dict[int, dict]]:
    """{arm: {seed: result}} of the stored runs made under `key`."""
    found: dict[str, dict[int, dict]] = {}
    for path in sorted(runs.glob(f"*_{key}.json")):
        record = json.loads(path.read_text())
        found.setdefault(record["arm"], {})[record["seed"]] = record
    return found


def table(found: dict[str, dict[int, dict]], title: str, note: str) -> str:
    """The markdown section: per arm, mIoU over seeds; per contrast, the paired comparison."""
    lines = [f"## {title}", "", note, "", "| arm | seeds | mIoU mean ± sd | s / run |", "|---|---|---|---|"]
    for arm in ARMS.values():
        runs = found.get(arm.key, {})
        if runs:
            values = np.array([r["mIoU"] for r in runs.values()])
            secs = np.mean([r["train_seconds"] for r in runs.values()])
            lines.append(f"| {arm.label} | {len(runs)} | {values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0:.2f}"
                         f" | {secs:.0f} |")
    rows = []
    for a, b in CONTRASTS:
        if a in found and b in found:
            rows.append((a, b, paired({s: r["mIoU"] for s, r in found[a].items()},
                                      {s: r["mIoU"] for s, r in found[b].items()})))
    adjusted = holm([r[2].p_t for r in rows])
    lines += ["", "| contrast | n | mean Δ mIoU | 95 % t interval | p (t) | p (Wilcoxon) | p (t, Holm) | reading |",
              "|---|---|---|---|---|---|---|---|"]
    for (a, b, p), p_holm in zip(rows, adjusted):
        lines.append(f"| {ARMS[a].key} − {ARMS[b].key} | {p.n} | {p.mean:+.2f} | [{p.low:+.2f}, {p.high:+.2f}] | "
                     f"{p.p_t:.3f} | {p.p_wilcoxon:.3f} | {p_holm:.3f} | {reading(p, p_holm)} |")
    return "\n".join(lines) + "\n"


def reading(p, p_holm: float) -> str:
    if p.n < FIRST_LOOK:
        return "first look (< 4 seeds)"
    if p_holm < 0.05:
        return "higher" if p.mean > 0 else "lower"
    return "within noise"


def parse_seeds(text: str) -> list[int]:
    """"0-11" or "3" -> seeds."""
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m study.proxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "table"),
                        help="run: train every missing (arm, seed) run, then print the table; "
                             "table: write the table of the stored runs")
    parser.add_argument("--backbone", type=Path, required=True,
                        help="the pretraining checkpoint (python -m csfr.train --config proxy_pretrain)")
    parser.add_argument("--config", default="proxy", help="preset or JSON file of the task (default: proxy)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, as csfr.train's --set (part of the runs' key)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="arms to run (default: all)")
    parser.add_argument("--seeds", nargs="+", default=["0-11"], help="seeds or ranges, e.g. 0-11 (default)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/proxy"), help="cache and runs (default runs/proxy)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (default 1: run two processes on two cores)")
    parser.add_argument("--end-to-end", action="store_true",
                        help="train the whole network from the pretrained backbone with csfr.train's trainer "
                             "(augmentation, auxiliary head) instead of heads on the frozen, cached features; "
                             "for the arms without proxy-only switches")
    parser.add_argument("--out", help="table: the results file to write the section into (default: print it)")
    parser.add_argument("--title", default=None,
                        help="table: the section's title (default: 'Proxy: frozen-feature study, families "
                             "scenes', or '... end to end ...' with --end-to-end)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = configs.resolve(args.config, args.overrides)
    if not args.backbone.is_file():
        sys.exit(f"proxy: backbone checkpoint {args.backbone} does not exist "
                 "(train it with python -m csfr.train --config proxy_pretrain)")
    key = config_key(config, args.backbone)
    seeds = sorted({s for text in args.seeds for s in parse_seeds(text)})
    runs = args.work_dir / ("end_to_end" if args.end_to_end else "runs")
    if args.command == "run":
        if args.end_to_end:
            weights = backbone_weights(args.backbone, args.work_dir)
        else:
            cache = cached_features(args.backbone, config, args.work_dir)
        runs.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            for name in args.arms:
                path = run_path(runs, ARMS[name], seed, key)
                if path.exists():
                    continue
                if args.end_to_end:
                    record = end_to_end_run(ARMS[name], seed, config, weights, runs / f"{name}_s{seed}_{key}")
                else:
                    record = train_run(ARMS[name], seed, config, cache)
                record["key"] = key
                text = json.dumps(record, indent=1)
                write_atomic(path, lambda tmp, text=text: tmp.write_text(text))
                print(f"{name} seed {seed}: mIoU {record['mIoU']:.2f} ({record['train_seconds']:.0f} s)", flush=True)
    mode = "end to end (unfrozen, augmented, auxiliary head)" if args.end_to_end else "frozen-feature study"
    title = args.title or f"Proxy: {mode}, families scenes"
    note = (f"`python -m study.proxy run --backbone {args.backbone} --config {args.config}"
            + " --end-to-end" * args.end_to_end + "".join(f" --set {o}" for o in args.overrides)
            + f"`; runs keyed {key}; {config['train']['iters']} iterations, batch {config['train']['batch_size']}; "
            f"{args.threads} torch thread(s) a process; table of {datetime.date.today()}, torch {torch.__version__}, "
            f"{os.cpu_count()} CPU cores. s / run is wall time of training, with other work on the machine.")
    section = table(results(runs, key), title, note)
    if args.out:
        write_section(args.out, title, section, heading="# Training results")
    print(section)


if __name__ == "__main__":
    main()
