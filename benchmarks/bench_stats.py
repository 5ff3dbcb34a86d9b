"""Paired statistics of the benchmark tables: per-case scores averaged over seeds, bootstrap confidence intervals.

Two arms are compared on the same held-out test cases: for each case, the mean of its score over the seeds of one
arm minus that of the other; the table reports the mean of these paired differences and a percentile bootstrap 95%
confidence interval over the cases (``scipy.stats.bootstrap``). A difference whose interval excludes 0 is one the
test split can tell apart from run-to-run and case-to-case spread; one run with one seed cannot.

From the command line, two arms of a benchmark work folder's ``per_case.csv`` (the bar may come from another folder
with the same test split, e.g. the same arm trained on the same labels there):

    python benchmarks/bench_stats.py WORK --arm robust_revised --bar nnunet_revised [--bar_work OTHER_WORK]

or of runs scored outside a work folder, one ``scores.json`` (as ``run_benchmark.score_folder`` writes it) per run:

    python benchmarks/bench_stats.py --arm_scores A_seed0.json A_seed1.json --bar_scores B_seed0.json B_seed1.json
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def case_dice(scores: Mapping) -> dict[str, float]:
    """Per test case, the mean Dice over its structures (as ``dice_mean`` averages them) of one run's scores."""
    return {case: float(np.mean([v["dice"] for v in per.values()])) for case, per in scores["per_case"].items()}


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


def read_per_case(path, arm: str) -> list[dict[str, float]]:
    """One arm's per-case Dice from a work folder's ``per_case.csv`` (or the file itself), one mapping per run
    (draw, seed)."""
    import csv
    from pathlib import Path

    path = Path(path)
    path = path / "per_case.csv" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: give a benchmark work folder or its per_case.csv")
    runs: dict[tuple[str, str], dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["arm"] == arm:
                runs.setdefault((row.get("draw", ""), row["seed"]), {})[row["case"]] = float(row["dice"])
    if not runs:
        raise SystemExit(f"{path} has no rows of arm '{arm}'")
    return list(runs.values())


def read_scores(paths: Sequence) -> list[dict[str, float]]:
    """Per-case Dice of each run from its ``scores.json`` (one file per run)."""
    import json
    from pathlib import Path

    runs = []
    for path in map(Path, paths):
        try:
            runs.append(case_dice(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{path} is not a readable scores file with per-case Dice ({e}): give the scores.json "
                             f"of a scored prediction folder") from None
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Paired difference of two benchmark arms per test case (each case's mean "
                                            "over runs), with a bootstrap 95% CI over the cases.")
    p.add_argument("work", nargs="?", help="benchmark work folder (or its per_case.csv) holding --arm")
    p.add_argument("--arm", help="arm of WORK")
    p.add_argument("--bar", help="arm of WORK (or of --bar_work) subtracted")
    p.add_argument("--bar_work", help="folder (or per_case.csv) holding --bar, if not WORK: e.g. the same arm trained "
                                      "on the same labels in another folder of the same test split")
    p.add_argument("--arm_scores", nargs="+", metavar="JSON", help="instead of WORK and --arm: one scores.json per "
                                                                   "run of the arm")
    p.add_argument("--bar_scores", nargs="+", metavar="JSON", help="instead of --bar: one scores.json per run of "
                                                                   "the bar")
    a = p.parse_args(argv)
    if a.arm_scores:
        arm, a.arm = read_scores(a.arm_scores), a.arm or "arm"
    elif a.work and a.arm:
        arm = read_per_case(a.work, a.arm)
    else:
        p.error("give WORK with --arm, or --arm_scores")
    if a.bar_scores:
        bar, a.bar = read_scores(a.bar_scores), a.bar or "bar"
    elif a.bar and (a.bar_work or a.work):
        bar = read_per_case(a.bar_work or a.work, a.bar)
    else:
        p.error("give --bar (an arm of WORK or --bar_work), or --bar_scores")
    mean, low, high, n = paired_difference(case_means(arm), case_means(bar))
    if n == 0:
        raise SystemExit("the two arms share no test case: were they scored on the same test split?")
    print(f"{a.arm} ({len(arm)} runs) - {a.bar} ({len(bar)} runs): {format_difference(mean, low, high)} "
          f"(mean {mean:+.4f} [{low:+.4f}, {high:+.4f}], {n} test cases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
