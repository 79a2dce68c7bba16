"""Mutation testing of the modules whose answers users depend on (a periodic check, not `make test`).

For each target, copies the committed tree (--rev, default HEAD) into WORK_DIR/<target>, writes a
[mutmut] section naming the module(s) and a fast test selection for them, runs `nice -n 19 mutmut run` there, and prints the score
and the surviving mutants with their diffs. Needs `pip install mutmut` (3.x). docs/testing.md records
the last results.

    python tools/mutation.py metrics inference trainer ops
    python tools/mutation.py --list
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (modules to mutate, pytest arguments selecting the tests for them, mutant name patterns or None = all)
TARGETS = {
    "metrics": (["csfr/engine/metrics.py"], ["tests/test_engine_metrics.py"], None),
    "inference": (["csfr/engine/inference.py"], ["tests/test_engine_inference.py"], None),
    # the loss and accumulation step, and the settings check that fixes the micro-batch size
    "trainer": (["csfr/engine/trainer.py"],
                ["tests/test_train_accumulation.py", "tests/test_train.py::test_bad_settings_fail_before_training"],
                ["csfr.engine.trainer.xǁTrainerǁ_step__mutmut_*", "csfr.engine.trainer.x__check__mutmut_*"]),
    "ops": (["csfr/ops/cac.py", "csfr/ops/centroids.py", "csfr/ops/blend.py", "csfr/ops/reference.py"],
            ["tests/test_ops_reference.py", "tests/test_ops_inputs.py", "tests/test_ops_ignore_index.py",
             "tests/test_ops_blend_shapes.py",
             "tests/test_ops_backends.py", "-k",
             "not triton and not compile and not baseline and not allocates and not cac_loss_matches and not backends_reports"],
            None),
}


def _copy_tree(dest: Path, rev: str) -> None:
    """The committed tree at `rev` (reproducible: others' uncommitted edits stay out) plus the built extension."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for so in glob.glob(str(ROOT / "csfr" / "_C*.so")):
        shutil.copy2(so, dest / "csfr")


def _config(modules: list[str], tests: list[str]) -> str:
    so = [os.path.relpath(p, ROOT) for p in glob.glob(str(ROOT / "csfr" / "_C*.so"))]
    lines = ["[mutmut]", "source_paths=csfr", "only_mutate=", *(f"  {m}" for m in modules),
             "also_copy=", *(f"  {s}" for s in so), "pytest_add_cli_args_test_selection=",
             *(f"  {t}" for t in tests), "pytest_add_cli_args=", "  -p", "  no:cacheprovider", "  -q"]
    return "\n".join(lines) + "\n"


def _statuses(where: Path, env: dict, patterns: list[str] | None) -> dict[str, str]:
    """mutant name -> mutmut's verdict, for the mutants matching `patterns` (all if None)."""
    listing = subprocess.run(["mutmut", "results", "--all", "true"], cwd=where, env=env, capture_output=True,
                             text=True, check=False).stdout
    status = dict(re.findall(r"^\s*(\S+): (.+)$", listing, re.MULTILINE))
    if patterns:
        status = {k: v for k, v in status.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
    return status


def run_target(name: str, work_dir: Path, children: int, sample: int | None, seed: int, rev: str) -> dict:
    modules, tests, patterns = TARGETS[name]
    where = work_dir / name
    _copy_tree(where, rev)
    (where / "setup.cfg").write_text(_config(modules, tests))
    # one thread: OpenMP pools do not survive mutmut's fork, and the machine is shared
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    mutmut = ["nice", "-n", "19", "mutmut", "run", "--max-children", str(children)]
    with open(where / "mutmut-run.log", "w") as log:
        if sample is not None:  # generate the mutants (a filter matching none stops mutmut there), then draw
            subprocess.run([*mutmut, "list-only"], cwd=where, env=env, stdout=log, stderr=subprocess.STDOUT,
                           check=False)
            names = sorted(_statuses(where, env, patterns))
            patterns = sorted(random.Random(seed).sample(names, min(sample, len(names))))
            print(f"   sampled {len(patterns)} of {len(names)} mutants (seed {seed})")
        subprocess.run([*mutmut, *(patterns or [])], cwd=where, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=False)
    status = _statuses(where, env, patterns)
    counts: dict[str, int] = {}
    for value in status.values():
        counts[value] = counts.get(value, 0) + 1
    checked = sum(n for s, n in counts.items() if s not in ("not checked", "skipped"))
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    print(f"== {name}: {', '.join(modules)} at {rev[:12]}")
    print(f"   {killed}/{checked} killed ({100 * killed / max(checked, 1):.1f} %); {counts}")
    for mutant, value in sorted(status.items()):
        if value not in ("killed", "timeout"):
            diff = subprocess.run(["mutmut", "show", mutant], cwd=where, env=env, capture_output=True, text=True,
                                  check=False).stdout
            changed = [line for line in diff.splitlines() if line[:2] in ("- ", "+ ")]
            print(f"   {value}: {mutant}\n      " + "\n      ".join(changed))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help=f"what to mutate: {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/csfr-mutation"),
                        help="where the copies and mutmut's state go (default /tmp/csfr-mutation); "
                             "`mutmut show NAME` / `mutmut results` work in WORK_DIR/<target>")
    parser.add_argument("--children", type=int, default=1, help="mutants tested in parallel (default 1)")
    parser.add_argument("--sample", type=int, default=None,
                        help="test a random sample of this many mutants per target (default: all)")
    parser.add_argument("--rev", default="HEAD", help="the commit to mutate (default HEAD)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample's draw (default 0)")
    parser.add_argument("--list", action="store_true", help="print the targets, modules and test selections")
    args = parser.parse_args(argv)
    if args.list:
        for name, (modules, tests, patterns) in TARGETS.items():
            print(f"{name}: {' '.join(modules)}\n  tests: {' '.join(tests)}\n  mutants: {patterns or 'all'}")
        return 0
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; valid: {', '.join(TARGETS)}")
    if shutil.which("mutmut") is None:
        parser.error("mutmut is not installed: pip install mutmut")
    rev = subprocess.run(["git", "rev-parse", args.rev], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()  # fixed now: HEAD may move while mutmut runs
    for name in args.targets or list(TARGETS):
        run_target(name, args.work_dir, args.children, args.sample, args.seed, rev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
