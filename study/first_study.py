"""Paired study of CSFR against its baseline on the synthetic scenes: the paper's ablation and the
choices it leaves open, each arm against the same baseline runs (docs/study.md).

Pairing: for a seed, every arm trains on the same scenes (the seed draws them), in the same data
order (the sampler's stream depends on the seed only), from the same initial weights of the layers
it shares with the baseline (backbone, baseline head, classifier, auxiliary head: copied from the
baseline built under that seed), with the torch RNG reseeded after that copy. The table reports,
per arm, the mean paired difference to the baseline over the seeds both finished, with a 95 %
Student-t interval, and the separability of the classifier's input and of S.

Resumable: each run's result is written (atomically) as `result.json` in its own folder as soon as
it finishes; a rerun skips finished runs and resumes an interrupted one from its last checkpoint.
Runs shared by several tables (the baseline, the default CSFR) are trained once. Several processes
may work on the same study: each claims a run (`claim` file holding its process id) before training
it and leaves runs claimed by a live process to their owner.

    python -m study.first_study main --scenes pairs modes --seeds 0 1 2 3 4 5
    python -m study.first_study ablation --head fcn --scenes pairs modes --seeds 0 1 2 3 4 5
    python -m study.first_study cac_weight --scenes modes --seeds 0 1 2 3 4 5
    python -m study.first_study cac_weight --scenes modes --seeds 6 7 --arms 0 1 2    # more seeds, two arms only
    python -m study.first_study main --scenes modes --seeds 0 1 2 3 4 5 --report-only   # tables from finished runs
    python -m study.first_study main --scenes pairs modes --seeds 0 --pictures           # PCA figures (seed 0)
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from scipy import stats
from tqdm import tqdm

from benchmarks.results_file import write_section
from csfr import configs
from csfr.engine.builders import build_model
from csfr.engine.trainer import Trainer
from csfr.models.registry import used_options
from csfr.profiling import device_description
from study.features import feature_report, plot_panels

# head -> (baseline model, CSFR model on that head)
HEADS = {"fcn": ("fcn_r50_d8", "csfr_r50_d8"), "deeplabv3": ("deeplabv3_r50_d8", "csfr_deeplabv3_r50_d8"),
         "pspnet": ("pspnet_r50_d8", "csfr_pspnet_r50_d8")}


@dataclass(frozen=True)
class Arm:
    """One row of a table: the baseline, or CSFR with model options set on top of the preset's."""

    label: str
    csfr: bool
    options: tuple[tuple[str, object], ...] = ()


BASELINE = Arm("baseline", False)
CSFR = Arm("CSFR (CAC weight 0.1)", True)


def _weight(w: float) -> Arm:
    return Arm(f"CAC weight {w:g}", True, (("w_intra", w), ("w_inter", w)))


TABLES: dict[str, list[Arm]] = {
    "main": [BASELINE, CSFR],
    "ablation": [BASELINE, Arm("+ CSFLM with CAC (fixed 0.5 blend)", True, (("gate", "fixed"),)),
                 Arm("+ AAM without CAC (weight 0)", True, (("w_intra", 0.0), ("w_inter", 0.0))),
                 Arm("full CSFR", True)],
    "cac_weight": [BASELINE, *(_weight(w) for w in (0.01, 0.03, 0.1, 0.3, 1.0))],
    "margins": [BASELINE, *(Arm(f"margins x{m:g} (delta_v {0.5 * m:g}, delta_d {1.5 * m:g})", True,
                                (("delta_v", 0.5 * m), ("delta_d", 1.5 * m))) for m in (0.25, 1, 4))],
    "cac_space": [BASELINE, Arm("CAC on S / each image's RMS norm (the presets')", True),
                  Arm("CAC on raw S (delta_v 0.5, delta_d 1.5)", True,
                      (("cac_normalize", "none"), ("delta_v", 0.5), ("delta_d", 1.5))),
                  Arm("CAC on per-pixel L2-normalised S", True, (("cac_normalize", "pixel"),)),
                  Arm("CAC on a 16-channel projection of S", True, (("cac_projection", 16),))],
    "dim": [BASELINE, *(Arm(f"C-S dimension {d}", True, (("csfr_dim", d),)) for d in (16, 32, 64, 128))],
    "gate": [BASELINE, *(Arm(f"gate {g}", True, (("gate", g),)) for g in ("pixel_channel", "pixel", "channel",
                                                                             "fixed"))],
    "aam_input": [BASELINE, Arm("AAM fuses S with the head features X", True, (("aam_fuses", "head"),)),
                  Arm("AAM fuses S with stage-4 features", True, (("aam_fuses", "backbone"),))],
}


# The study's reference CSFR: the synthetic preset's CAC weight when the study was run, pinned so
# that a later change of the preset does not change what the stored runs mean.
PINNED = ["model.options.w_intra=0.1", "model.options.w_inter=0.1"]
COMPARED = ("model", "data", "train", "eval")  # the config sections a stored run must match


def trained(config: dict) -> dict:
    """What defines a run: the COMPARED sections, with only the model options the model uses (a
    baseline trained under another CAC weight is the same run, and is trained once)."""
    model = config["model"]
    return {**{key: config[key] for key in COMPARED},
            "model": {**model, "options": used_options(model["name"], model["options"])}}


def run_config(args, scenes: str, arm: Arm, seed: int) -> dict:
    """The resolved config of one run: the preset, the study's settings, the arm's model options."""
    baseline, csfr = HEADS[args.head]
    iters = args.iters
    study = [f"data.options.scenes={scenes}", f"train.iters={iters}", f"train.seed={seed}",
             f"train.val_interval={max(iters // args.curve_points, 1)}", f"train.ckpt_interval={iters // 4 or 1}",
             "eval.save_predictions=0", f"model.name={csfr if arm.csfr else baseline}"]
    options = [f"model.options.{k}={json.dumps(v)}" for k, v in arm.options]
    # the pinned weights first: a --set of the CAC weights (the ablation at another weight) overrides them
    return configs.resolve(args.config, [*PINNED, *args.overrides, *study, *options])


def changed_options(args, config: dict) -> list[tuple[str, object]]:
    """The model options the run's model uses that differ from the study's reference, sorted."""
    reference = configs.resolve(args.config, PINNED)["model"]["options"]
    model = config["model"]
    return sorted((k, v) for k, v in used_options(model["name"], model["options"]).items() if reference.get(k) != v)


def run_dir(args, config: dict, scenes: str, seed: int) -> Path:
    """runs/study/<scenes>_it<iters>[_<hash>]/<model>[+option=value...]/seed<N>: an arm is named by the
    model options it uses that differ from the study's reference (CAC weight 0.1 *is* its CSFR), so a
    run that several tables hold (the baseline; the full CSFR at weight 0.01 of the weight sweep and
    of the ablation at 0.01) is trained once. Overrides of anything but the model options (the data,
    the schedule) hash into the group: such runs share nothing with the reference's."""
    name = config["model"]["name"] + "".join(f"+{k}={v}" for k, v in changed_options(args, config))
    group = f"{scenes}_it{args.iters}"
    others = [o for o in args.overrides if not o.startswith("model.options.")]
    if others:
        group += "_" + hashlib.sha1(" ".join(others).encode()).hexdigest()[:8]
    return args.work_dir / group / name / f"seed{seed}"


@torch.no_grad()
def share_initialisation(model, config: dict, num_classes: int, seed: int) -> int:
    """Copies the initial weights of the baseline built under `seed` into every layer `model`
    shares with it (CSFR keeps the baseline head as head.head); reseeds torch. Returns the count."""
    baseline = HEADS_BY_CSFR.get(config["model"]["name"], config["model"]["name"])
    torch.manual_seed(seed)
    reference = build_model({**config, "model": {**config["model"], "name": baseline}}, num_classes).state_dict()
    copied = 0
    for key, tensor in model.state_dict().items():
        source = key.replace("head.head.", "head.", 1) if model.is_csfr else key
        if source in reference and reference[source].shape == tensor.shape:
            tensor.copy_(reference[source])
            copied += 1
    torch.manual_seed(seed)
    return copied


HEADS_BY_CSFR = {csfr: baseline for baseline, csfr in HEADS.values()}


def curve(work_dir: Path) -> list[list[float]]:
    """[[iteration, mIoU], ...] of the run's validations (the last record per iteration)."""
    points = {}
    for line in (work_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "val":
            points[record["iteration"]] = record["mIoU"]
    return [[it, points[it]] for it in sorted(points)]


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def train_one(args, config: dict, folder: Path, progress: bool) -> dict:
    """Trains (or resumes) one run and returns its result record, also saved as folder/result.json."""
    resume = "auto" if any((folder / "checkpoints").glob("iter_*.pt")) else None
    trainer = Trainer(config, folder, resume=resume, progress=progress)
    copied, start_iteration = None, trainer.iteration
    if trainer.iteration == 0:
        copied = share_initialisation(trainer.model, config, trainer.train_set.num_classes, config["train"]["seed"])
    start = time.perf_counter()
    result = trainer.run()
    wall = time.perf_counter() - start
    features = feature_report(trainer.model, trainer.val_set, trainer.ctx.device)
    record = {"model": config["model"]["name"], "options": config["model"]["options"],
              "scenes": config["data"]["options"]["scenes"], "seed": config["train"]["seed"],
              "iters": config["train"]["iters"], "mIoU": result["scores"]["mIoU"], "best": result["best"],
              "curve": curve(folder), "separability": {k: v["separability"] for k, v in features.items()},
              "wall_s": round(wall, 1), "resumed": resume is not None, "start_iteration": start_iteration,
              "shared_tensors": copied,
              "machine": device_description(trainer.ctx.device), "date": datetime.datetime.now(
                  datetime.timezone.utc).isoformat(timespec="minutes"), "config": config}
    write_json(folder / "result.json", record)
    return record


def claim(folder: Path) -> bool:
    """True if this process now owns the run in `folder` (no claim, or its owner has died)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "claim"
    if path.exists():
        try:
            os.kill(int(path.read_text() or 0), 0)
            return int(path.read_text()) == os.getpid()
        except (ValueError, ProcessLookupError):
            path.unlink(missing_ok=True)  # a dead owner: the run resumes from its checkpoint
    try:
        with open(path, "x") as f:
            f.write(str(os.getpid()))
        return True
    except FileExistsError:
        return False


def load_result(folder: Path, config: dict) -> dict | None:
    """The finished run's record, or None; a record trained from another config raises."""
    path = folder / "result.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if trained(record["config"]) != trained(config):
        raise SystemExit(f"{path} was trained with another config; move the folder away to retrain it")
    return record


def paired(values: dict[int, float], base: dict[int, float]) -> tuple[int, float, float]:
    """(n, mean, 95 % t half-width) of value - baseline over the seeds both have."""
    diffs = [values[s] - base[s] for s in values if s in base]
    n = len(diffs)
    if n == 0:
        return 0, math.nan, math.nan
    mean = sum(diffs) / n
    if n == 1:
        return 1, mean, math.nan
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return n, mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def run_minutes(record: dict) -> float | None:
    """Wall minutes of a whole run; a resumed run's last session scaled to all its iterations."""
    start = record.get("start_iteration", 0 if not record["resumed"] else None)
    if start is None or start >= record["iters"]:
        return None
    return record["wall_s"] / 60 * record["iters"] / (record["iters"] - start)


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {sd:.2f}"


def _delta(n: int, mean: float, half: float, digits: int) -> str:
    """A paired difference as 'mean [low, high]' (no interval from one seed; '-' from none)."""
    if n == 0:
        return "-"
    return f"{mean:+.{digits}f}" + ("" if math.isnan(half) else f" [{mean - half:+.{digits}f}, {mean + half:+.{digits}f}]")


def section_title(args, table: str, scenes: str) -> str:
    """The title of a table's section in the results file; overrides give it a section of its own (the
    same table at another CAC weight is another result)."""
    title = f"Study: {table}, {args.head} head, {scenes} scenes, {args.iters} iterations"
    return title + "".join(", " + o.removeprefix("model.options.") for o in args.overrides)


def table_section(args, table: str, scenes: str, results: dict[Arm, dict[int, dict]]) -> tuple[str, str]:
    """(title, markdown) of one table and scene kind from the finished runs."""
    title = section_title(args, table, scenes)
    miou = {arm: {s: r["mIoU"] for s, r in runs.items()} for arm, runs in results.items()}
    sep = {arm: {s: r["separability"]["classifier input"] for s, r in runs.items()} for arm, runs in results.items()}
    base = miou[BASELINE]
    lines = [f"## {title}", "",
             (f"Command: `python -m study.first_study {table} --head {args.head} --scenes {scenes} --iters {args.iters} "
              f"--curve-points {args.curve_points} "
             f"--seeds {' '.join(map(str, args.seeds))}{''.join(' --set ' + o for o in args.overrides)}`. "
             "Δ = arm − baseline, paired by seed, mean with its 95 % t interval (n = seeds both finished; "
             "an arm with a smaller n was trained on fewer seeds, `--arms`). "
             "Separability = mean inter-centroid distance / mean intra-class RMS spread on the validation "
             "scenes; Δ sep. = that of the classifier input, arm − baseline, paired as Δ mIoU. Minutes per run: "
             "wall time (a resumed run's last session scaled to the whole run), one torch thread under nice 19 on "
             "a machine shared with other jobs: an upper bound."), "",
             ("| arm | n | mIoU (mean ± sd) | Δ mIoU [95 % CI] | Δ by seed | sep. classifier input "
              "| Δ sep. [95 % CI] | sep. S | min / run |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, runs in results.items():
        values = miou[arm]
        delta = "-" if arm == BASELINE else _delta(*paired(values, base), digits=2)
        delta_sep = "-" if arm == BASELINE else _delta(*paired(sep[arm], sep[BASELINE]), digits=3)
        sep_x = _mean_sd(list(sep[arm].values()))
        sep_s = _mean_sd([r["separability"]["S"] for r in runs.values() if "S" in r["separability"]])
        minutes = _mean_sd([run_minutes(r) for r in runs.values() if run_minutes(r) is not None]).split(" ±")[0]
        by_seed = "-" if arm == BASELINE else " ".join(f"{values[s] - base[s]:+.1f}" for s in sorted(values) if s in base)
        lines.append(f"| {arm.label} | {len(runs)} | {_mean_sd(list(values.values()))} | {delta} | {by_seed or '-'} | "
                     f"{sep_x} | {delta_sep} | {sep_s} | {minutes} |")
    if results.get(BASELINE):
        curves = [r["curve"] for r in results[BASELINE].values()]
        its = [it for it, _ in curves[0]]
        means = [sum(c[i][1] for c in curves if len(c) > i) / sum(len(c) > i for c in curves) for i in range(len(its))]
        lines += ["", "Baseline validation mIoU during training (mean over its seeds; poly learning rate to 0):", "",
                  "| iteration | " + " | ".join(map(str, its)) + " |", "|---" * (len(its) + 1) + "|",
                  "| mIoU | " + " | ".join(f"{m:.1f}" for m in means) + " |"]
    return title, "\n".join(lines) + "\n"


def pictures(args, scenes: str, seed: int) -> Path:
    """PCA of a sample of validation pixel features, baseline vs CSFR (the study's reference, or as --set
    makes it: its panels name the options that differ), from finished runs."""
    panels, dataset = [], None
    for arm in (BASELINE, CSFR):
        config = run_config(args, scenes, arm, seed)
        folder = run_dir(args, config, scenes, seed)
        if load_result(folder, config) is None:
            raise SystemExit(f"--pictures: {folder} has not finished; train it first")
        trainer = Trainer(config, folder, resume=str(folder / "checkpoints" / f"iter_{args.iters:06d}.pt"),
                          progress=False)
        dataset = trainer.val_set
        report = feature_report(trainer.model, dataset, trainer.ctx.device, sample_per_class=300, seed=seed)
        changed = [f"{k}={v}" for k, v in changed_options(args, config)]
        label = arm.label.split(" (")[0] + (f" ({', '.join(changed)})" if arm.csfr and changed else "")
        for name, item in report.items():
            rows, labels = item["sample"]
            panels.append((f"{label}: {name}\nseparability {item['separability']:.2f}", rows, labels))
    path = args.pictures_dir / f"study_features_{scenes}{'_' + args.pictures_tag if args.pictures_tag else ''}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_panels(panels, dataset.class_names, dataset.palette, path)
    return path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=sorted(TABLES), help="which comparison: " + "; ".join(
        f"{name}: {', '.join(a.label for a in arms)}" for name, arms in TABLES.items()))
    p.add_argument("--head", default="fcn", choices=sorted(HEADS), help="baseline head of every arm (default fcn)")
    p.add_argument("--scenes", nargs="+", default=["pairs", "modes"], choices=["pairs", "modes"],
                   help="synthetic scene kinds, one table each (default both)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5],
                   help="seeds; each draws the scenes, the data order and the shared initialisation (default 0-5)")
    p.add_argument("--iters", type=int, default=1000, help="training iterations per run (default 1000)")
    p.add_argument("--curve-points", type=int, default=10, help="validations per run, for the curve (default 10)")
    p.add_argument("--config", default="synthetic", help="preset every run starts from (default synthetic)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run, as for python -m csfr.train (repeatable)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/study"), help="where runs live (default runs/study)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "TRAIN_RESULTS.md"),
                   help="markdown file whose table sections are (re)written (default benchmarks/TRAIN_RESULTS.md)")
    p.add_argument("--arms", type=int, nargs="+", metavar="I",
                   help="train only these arms, by position in the table (0 = baseline; --help lists them in "
                        "order), to give more seeds where a decision needs them; the report still lists every "
                        "arm's finished runs (default all)")
    p.add_argument("--report-only", action="store_true", help="write the tables from finished runs; train nothing")
    p.add_argument("--pictures", action="store_true",
                   help="instead of training: PCA figures of baseline vs CSFR features for the first seed")
    p.add_argument("--pictures-dir", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images",
                   help="where --pictures writes study_features_<scenes>[_<tag>].png (default docs/images)")
    p.add_argument("--pictures-tag", default="", help="suffix of the figures' names, e.g. for a --set setting")
    p.add_argument("--progress", action="store_true", help="also show each run's own iteration bar")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.iters < 1 or args.curve_points < 1:
        raise SystemExit("--iters and --curve-points must be >= 1")
    if args.pictures:
        for scenes in args.scenes:
            print(pictures(args, scenes, args.seeds[0]))
        return
    arms = TABLES[args.table]
    if args.arms and not set(args.arms) <= set(range(len(arms))):
        raise SystemExit(f"--arms: table {args.table} has arms 0-{len(arms) - 1}, got {args.arms}")
    trained = [arm for i, arm in enumerate(arms) if not args.arms or i in args.arms]
    jobs = [(scenes, arm, seed) for seed in args.seeds for scenes in args.scenes for arm in arms]
    results: dict[str, dict[Arm, dict[int, dict]]] = {s: {arm: {} for arm in arms} for s in args.scenes}
    todo = []
    for scenes, arm, seed in jobs:
        config = run_config(args, scenes, arm, seed)
        folder = run_dir(args, config, scenes, seed)
        record = load_result(folder, config)
        if record is not None:
            results[scenes][arm][seed] = record
        elif not args.report_only and arm in trained and (folder, scenes, arm, seed) not in todo:
            todo.append((folder, scenes, arm, seed))
    bar = tqdm(todo, desc=f"study {args.table}", unit="run", dynamic_ncols=True)
    for folder, scenes, arm, seed in bar:
        bar.set_postfix_str(f"{scenes} seed {seed} {arm.label}")
        config = run_config(args, scenes, arm, seed)
        record = load_result(folder, config)  # another process may have finished it meanwhile
        if record is None:
            if not claim(folder):
                bar.write(f"{scenes} seed {seed} {arm.label}: trained by another process, skipped")
                continue
            try:
                record = train_one(args, config, folder, args.progress)
            finally:
                (folder / "claim").unlink(missing_ok=True)
        results[scenes][arm][seed] = record
        minutes = run_minutes(record)
        bar.write(f"{scenes} seed {seed} {arm.label}: mIoU {record['mIoU']:.2f}"
                  + (f" ({minutes:.1f} min)" if minutes is not None else ""))
        write_section(args.out, *table_section(args, args.table, scenes, results[scenes]),
                      heading="# Training proxy results (CSFR vs baseline)")
    for scenes in args.scenes:
        title, text = table_section(args, args.table, scenes, results[scenes])
        write_section(args.out, title, text, heading="# Training proxy results (CSFR vs baseline)")
        print(text)


if __name__ == "__main__":
    main()
