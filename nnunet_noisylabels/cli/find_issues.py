"""``nnUNetv2_nl_find_issues``: rank training cases and voxels by label quality (confident learning).

Needs out-of-fold probabilities: train the five folds with ``nnUNetv2_train DATASET CONFIG FOLD --npz`` (any
trainer), then point this command at the results folder (``-i``, or ``-d``/``-c``/``-tr``/``-p`` as nnU-Net spells
them). The probabilities must cover every training case (the validation cases of all folds of
``$nnUNet_preprocessed/<dataset>/splits_final.json``, or every label file when that is not found); otherwise the
command refuses (exit status 2) and names the folds to train, unless the folds are restricted explicitly with ``-f``
(then only those folds' validation cases are ranked). It writes into the output folder (default
``$nnUNet_preprocessed/<dataset>/label_issues``, where ``nnUNetTrainerCLSLR`` looks for it):

- ``label_issues.csv`` and ``label_issues.json``: one row per case, worst label quality first (hand the top of the
  list to an annotator), plus the per-class thresholds;
- ``issue_maps/<case><file_ending>``: per-case label files, 1 where the given label is likely wrong, 0 elsewhere,
  in the geometry of the case's label file.

Labels are only read, never modified.

This module holds argument parsing, messages and exit statuses only; the scoring, the coverage check and the files
written are :mod:`nnunet_noisylabels.baselines.find_issues`.
"""
from __future__ import annotations

import argparse
import sys

from nnunet_noisylabels.baselines.find_issues import find_issues, resolve_results_folder
from nnunet_noisylabels.baselines.label_issues import METHODS


def main(argv: list[str] | None = None) -> int:
    """Console script ``nnUNetv2_nl_find_issues``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_nl_find_issues",
        description="Rank training cases and voxels by label quality with confident learning on out-of-fold "
                    "probabilities from nnU-Net's 5-fold cross-validation (nnUNetv2_train ... --npz).")
    parser.add_argument("-i", "--input", help="results folder <trainer>__<plans>__<configuration> (or use -d/-c)")
    parser.add_argument("-d", help="dataset name or id (with -c, -tr, -p instead of -i)")
    parser.add_argument("-c", help="configuration, e.g. 2d or 3d_fullres")
    parser.add_argument("-tr", default="nnUNetTrainer", help="trainer of the cross-validation (default nnUNetTrainer)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-f", nargs="+", default=None,
                        help="folds to read (default: every fold_<n> present, which must then cover every training "
                             "case); with -f only these folds' validation cases are ranked")
    parser.add_argument("-l", "--labels", default=None, help="label folder (default $nnUNet_raw/<dataset>/labelsTr)")
    parser.add_argument("-o", "--output", default=None,
                        help="output folder (default $nnUNet_preprocessed/<dataset>/label_issues)")
    parser.add_argument("--method", default="confident_learning", choices=METHODS)
    parser.add_argument("--top", type=int, default=10, help="print this many worst cases (default 10)")
    parser.add_argument("--no_pbar", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        if args.input is None:
            if args.d is None or args.c is None:
                parser.error("give the results folder with -i, or the dataset and configuration with -d and -c")
            args.input = resolve_results_folder(args.d, args.c, args.tr, args.p)
        rows = find_issues(args.input, args.labels, args.output, args.f, args.method, not args.no_pbar)
    except (FileNotFoundError, ValueError) as e:
        print(f"nnUNetv2_nl_find_issues: error: {e}", file=sys.stderr)
        return 2
    print(f"{'rank':>4}  {'case':<24} {'quality':>8} {'issues':>8}")
    for r in rows[:args.top]:
        print(f"{r['rank']:>4}  {r['case']:<24} {r['label_quality']:>8.4f} {r['num_issues']:>8d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
