"""Poly learning-rate schedule with warmup and the head multiplier."""

import pytest
import torch

from csfr.engine.schedule import poly_factor, poly_scheduler


def test_poly_factor_values():
    assert poly_factor(0, 100, 0.9) == 1.0
    assert poly_factor(50, 100, 0.9) == pytest.approx(0.5 ** 0.9)
    assert poly_factor(100, 100, 0.9, min_ratio=0.01) == pytest.approx(0.01)
    assert poly_factor(50, 100, 1.0, min_ratio=0.2) == pytest.approx(0.2 + 0.8 * 0.5)


def test_warmup_ramps_linearly_from_the_ratio():
    assert poly_factor(0, 100, 0.9, warmup_iters=10, warmup_ratio=0.1) == pytest.approx(0.1)
    ramp = 0.1 + 0.9 * 5 / 10
    assert poly_factor(5, 100, 0.9, warmup_iters=10, warmup_ratio=0.1) == pytest.approx(ramp * 0.95 ** 0.9)
    assert poly_factor(10, 100, 0.9, warmup_iters=10) == pytest.approx(0.9 ** 0.9)


def test_scheduler_keeps_the_head_multiplier():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.01}, {"params": [b], "lr": 0.1}], lr=0.01)
    train = {"lr": 0.01, "min_lr": 1e-4, "iters": 10, "poly_power": 0.9, "warmup_iters": 0, "warmup_ratio": 0.1}
    sched = poly_scheduler(opt, train)
    for _ in range(5):
        opt.step()
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[1] == pytest.approx(10 * lrs[0])
    assert lrs[0] == pytest.approx(0.01 * (0.01 + 0.99 * 0.5 ** 0.9))
