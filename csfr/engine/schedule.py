"""The learning-rate schedule: poly decay to a floor, after an optional linear warmup."""

from __future__ import annotations

import torch


def poly_factor(iteration: int, iters: int, power: float, min_ratio: float = 0.0,
                warmup_iters: int = 0, warmup_ratio: float = 0.1) -> float:
    """Multiplier of the base lr at `iteration` (0-based): min_ratio + (1 - min_ratio) * (1 - t/T)^power,
    ramped linearly from warmup_ratio times that over the first warmup_iters iterations."""
    factor = min_ratio + (1.0 - min_ratio) * (1.0 - min(iteration, iters) / iters) ** power
    if iteration < warmup_iters:
        factor *= warmup_ratio + (1.0 - warmup_ratio) * iteration / warmup_iters
    return factor


def poly_scheduler(optimizer: torch.optim.Optimizer, train: dict) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over every parameter group (head groups keep their multiplier) from the train config."""
    min_ratio = train["min_lr"] / train["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: poly_factor(
        it, train["iters"], train["poly_power"], min_ratio, train["warmup_iters"], train["warmup_ratio"]))


RECOMPUTED_ON_RESUME = ("iters", "min_lr", "poly_power", "warmup_iters", "warmup_ratio")
KEPT_ON_RESUME = ("lr", "head_lr_mult")  # the optimiser's and scheduler's saved state hold them


def resume_note(saved: dict, train: dict, iteration: int) -> str | None:
    """What resuming at `iteration` a run saved with train config `saved` under `train` does to the
    schedule: None when nothing changed; a note when the poly schedule is recomputed with new
    settings (the learning rate jumps); ValueError when the run cannot continue as configured.

    Args:
        saved: the checkpoint's `config["train"]`.
        train: the `train` section the run resumes with.
        iteration: the checkpoint's iteration.
    Returns:
        The note to print, or None.
    """
    for key in KEPT_ON_RESUME:
        if saved.get(key, train[key]) != train[key]:
            raise ValueError(f"--resume: train.{key} is {train[key]} here but {saved[key]} in the checkpoint; a "
                             "resumed run keeps the checkpoint's learning rates, so set it back or start a new run")
    if iteration > train["iters"]:
        raise ValueError(f"--resume: the checkpoint is at iteration {iteration}, past train.iters = "
                         f"{train['iters']}; set train.iters to at least {iteration}")
    changed = [key for key in RECOMPUTED_ON_RESUME if saved.get(key, train[key]) != train[key]]
    if not changed:
        return None

    def lr(cfg):
        return cfg["lr"] * poly_factor(iteration, cfg["iters"], cfg["poly_power"], cfg["min_lr"] / cfg["lr"],
                                       cfg["warmup_iters"], cfg["warmup_ratio"])

    what = ", ".join(f"train.{key} {saved[key]} -> {train[key]}" for key in changed)
    return (f"note: {what} since the checkpoint: the poly schedule is recomputed with the new settings, so at "
            f"iteration {iteration} the learning rate goes from {lr(saved):.4g} to {lr(train):.4g}; "
            "the run will not repeat one trained with these settings from the start")
