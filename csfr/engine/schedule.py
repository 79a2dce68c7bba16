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
