"""The converters' shared runner: one job per output file, skipped when the output exists,
run on a process pool behind a tqdm bar, each output written atomically (temp name + rename)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from csfr.data.base import apply_table, read_label, save_png


@dataclass(frozen=True)
class Job:
    """Write `make(*args)` (a label map) to `dst` as PNG."""

    make: Callable[..., np.ndarray]
    args: tuple
    dst: Path


def _run(job: Job) -> None:
    save_png(job.make(*job.args), job.dst)


def find_sources(folder: Path, suffix: str, exclude: str | None = None) -> list[Path]:
    """Files below `folder` ending with `suffix` (not with `exclude`); raises if there are none."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"folder {folder} not found (docs/data.md shows the expected layout)")
    found = sorted(p for p in Path(folder).rglob(f"*{suffix}")
                   if not p.name.startswith(".") and not (exclude and p.name.endswith(exclude)))
    if not found:
        raise FileNotFoundError(f"no *{suffix} files found under {folder}")
    return found


def run_jobs(jobs: list[Job], workers: int, desc: str) -> tuple[int, int]:
    """Run the jobs whose output is not there yet; returns (written, skipped)."""
    todo = [job for job in jobs if not job.dst.exists()]
    with tqdm(total=len(todo), desc=desc, unit="file") as bar:
        if workers <= 1:
            for job in todo:
                _run(job)
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                try:
                    for _ in pool.map(_run, todo, chunksize=max(1, min(64, len(todo) // (8 * workers)))):
                        bar.update()
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
    return len(todo), len(jobs) - len(todo)


def remap_png(src: Path, table: np.ndarray) -> np.ndarray:
    """A raw-id label PNG mapped through `table` to uint8 train ids (unknown values raise)."""
    return apply_table(read_label(src), table, src).astype(np.uint8)
