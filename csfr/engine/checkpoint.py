"""Checkpoints: atomic writes, the RNG states that make a resume exact, and strict weight loading.

A run folder keeps `checkpoints/iter_NNNNNN.pt` (the last few) and `checkpoints/best.pt`. Each file
is written under a temporary name and renamed, so a run killed while saving leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

_ITER_FILE = re.compile(r"^iter_(\d+)\.pt$")


def save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (RuntimeError, OSError) as e:  # torch reports a full disk as "unexpected pos ..."
        free = shutil.disk_usage(path.parent).free
        raise OSError(errno.ENOSPC if free < 1 << 20 else getattr(e, "errno", None) or errno.EIO,
                      f"cannot write checkpoint {path} ({free / 2**20:.0f} MiB free on its disk): {e}") from e
    finally:
        tmp.unlink(missing_ok=True)


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e


def read_trained(path: str | os.PathLike) -> dict:
    """A checkpoint written by csfr.train (it holds `model` and `config`); anything else raises."""
    state = load(path)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"checkpoint {path} was not written by csfr.train (no model/config entries)")
    return state


def class_info(dataset) -> dict:
    """What inference needs to know of the training data, saved in every checkpoint (csfr.load
    reads it, so predicting needs no dataset on disk): {"classes": {dataset, names, palette,
    ignore_index}}."""
    return {"classes": {"dataset": dataset.name, "names": list(dataset.class_names),
                        "palette": np.asarray(dataset.palette, np.uint8).tolist(),
                        "ignore_index": int(dataset.ignore_index)}}


def iteration_files(folder: Path) -> list[Path]:
    """The iter_*.pt checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _ITER_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(folder: Path) -> Path | None:
    files = iteration_files(folder)
    return files[-1] if files else None


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` iteration checkpoints."""
    for path in iteration_files(folder)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def rng_state() -> dict:
    """Every random generator a training step draws from (dropout, augmentation in the main process)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_weights(model: nn.Module, weights: dict, source: str) -> None:
    """Load a full model state_dict strictly; if keys or shapes differ, raise listing them all."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    mismatched = sorted(f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or mismatched:
        def listing(title, keys):
            shown = "\n    ".join(keys[:20]) + (f"\n    ... and {len(keys) - 20} more" if len(keys) > 20 else "")
            return f"  {title} ({len(keys)}):\n    {shown}" if keys else ""
        report = "\n".join(filter(None, (listing("missing in checkpoint", missing),
                                         listing("not in model", unexpected),
                                         listing("shape differs", mismatched))))
        raise ValueError(f"checkpoint {source} does not fit this model (was it trained with another "
                         f"model or number of classes?):\n{report}")
    model.load_state_dict(weights)
