"""Paired statistics of the benchmark tables: per-case scores averaged over seeds, bootstrap confidence intervals.

Two arms are compared on the same held-out test cases: for each case, the mean of its score over the seeds of one
arm minus that of the other; the table reports the mean of these paired differences and a percentile bootstrap 95%
confidence interval over the cases (``scipy.stats.bootstrap``). A difference whose interval excludes 0 is one the
test split can tell apart from run-to-run and case-to-case spread; one run with one seed cannot.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def case_means(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per test case, the mean of its score over the seeds (only cases that every seed scored)."""
    cases = set(per_seed[0]) if per_seed else set()
    for scores in per_seed[1:]:
        cases &= set(scores)
    return {c: float(np.mean([s[c] for s in per_seed])) for c in sorted(cases)}


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 10000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its percentile bootstrap confidence interval."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    if x.size == 1 or np.all(x == x[0]):
        return float(x.mean()), float(x.mean()), float(x.mean())
    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(x.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_difference(arm: Mapping[str, float], bar: Mapping[str, float], confidence: float = 0.95,
                      n_resamples: int = 10000, seed: int = 0) -> tuple[float, float, float, int]:
    """(mean difference arm - bar, CI low, CI high, number of cases) over the test cases both arms scored."""
    cases = sorted(set(arm) & set(bar))
    diff = [arm[c] - bar[c] for c in cases]
    return (*bootstrap_ci(diff, confidence, n_resamples, seed), len(cases))


def format_difference(mean: float, low: float, high: float) -> str:
    """``+0.012 [+0.004, +0.020]``; the interval is starred when it excludes 0."""
    if not np.isfinite(mean):
        return "n/a"
    star = "*" if low > 0 or high < 0 else ""
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]{star}"
