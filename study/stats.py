"""Paired comparisons over seeds: the t interval, the Wilcoxon signed-rank test, Holm's correction."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

FIRST_LOOK = 4  # fewer paired seeds than this: a first look, never a finding


@dataclass(frozen=True)
class Paired:
    """arm - reference over the seeds both have: n, mean, 95 % t half-width, two-sided p-values."""

    n: int
    mean: float
    half: float
    p_t: float
    p_wilcoxon: float

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def paired(arm: dict[int, float], reference: dict[int, float]) -> Paired:
    """Differences arm[s] - reference[s] over the shared seeds s. With one seed the interval and
    p-values are NaN; with all differences 0 the p-values are 1."""
    diffs = [arm[s] - reference[s] for s in sorted(set(arm) & set(reference))]
    n = len(diffs)
    if n == 0:
        return Paired(0, math.nan, math.nan, math.nan, math.nan)
    mean = sum(diffs) / n
    if n == 1:
        return Paired(1, mean, math.nan, math.nan, math.nan)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    if not any(diffs):
        return Paired(n, 0.0, 0.0, 1.0, 1.0)
    p_t = float(stats.ttest_1samp(diffs, 0.0).pvalue) if sd > 0 else 0.0
    p_w = float(stats.wilcoxon(diffs).pvalue)
    return Paired(n, mean, half, p_t, p_w)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted)."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted, running = list(pvalues), 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted
