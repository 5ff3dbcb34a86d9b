"""Rank training cases and voxels by label quality from a cross-validation's out-of-fold probabilities (the library
behind ``nnUNetv2_nl_find_issues``).

Reads nnU-Net's results folder of a cross-validation trained with ``nnUNetv2_train DATASET CONFIG FOLD --npz`` (any
trainer): the ``fold_<n>/validation/<case>.npz`` probabilities and the labels the folds were trained on, and scores
them with the confident-learning rule of :mod:`nnunet_noisylabels.baselines.label_issues`. The probabilities must
cover every training case (the validation cases of all folds of ``$nnUNet_preprocessed/<dataset>/splits_final.json``,
or every label file when that is not found); otherwise :func:`check_coverage` refuses (ValueError) and names the folds
to train, unless the folds are restricted explicitly (then only those folds' validation cases are ranked).
:func:`find_issues` writes into the output folder (default ``$nnUNet_preprocessed/<dataset>/label_issues``, where
``nnUNetTrainerCLSLR`` looks for it):

- ``label_issues.csv`` and ``label_issues.json``: one row per case, worst label quality first (hand the top of the
  list to an annotator), plus the per-class thresholds;
- ``issue_maps/<case><file_ending>``: per-case label files, 1 where the given label is likely wrong, 0 elsewhere,
  in the geometry of the case's label file.

Labels are only read, never modified.
"""
from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from glob import glob
from os.path import basename, isdir, isfile, join
from typing import Any

import numpy as np
from tqdm import tqdm

from nnunet_noisylabels.baselines.label_issues import (
    ClassThresholds,
    case_quality,
    find_label_issues,
    rank_cases,
)
from nnunet_noisylabels.common.raw_dataset import (load_json, read_label, write_json_atomic, write_label_atomic,
                                                   write_text_atomic)

COLUMNS = ("rank", "case", "label_quality", "num_issues", "issue_fraction", "issue_fraction_roi",
           "mean_self_confidence", "dice_given_vs_predicted", "fold")


def resolve_results_folder(dataset: str, configuration: str, trainer: str = "nnUNetTrainer",
                           plans: str = "nnUNetPlans") -> str:
    """Find ``$nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>`` from a dataset id or name."""
    root = os.environ.get("nnUNet_results")
    if not root or not isdir(root):
        raise FileNotFoundError("nnUNet_results is not set or does not exist; set it or pass the results folder "
                                "with -i.")
    if dataset.isdigit():
        matches = sorted(d for d in os.listdir(root) if re.fullmatch(rf"Dataset{int(dataset):03d}_.+", d))
        if len(matches) != 1:
            raise FileNotFoundError(f"Expected one folder Dataset{int(dataset):03d}_* in {root}, found {matches}.")
        dataset = matches[0]
    folder = join(root, dataset, f"{trainer}__{plans}__{configuration}")
    if not isdir(folder):
        raise FileNotFoundError(f"No results folder {folder}. Train the folds first: nnUNetv2_train {dataset} "
                                f"{configuration} FOLD -tr {trainer} -p {plans} --npz")
    return folder


def collect_validation_probabilities(results_folder: str, folds: list[str] | None = None) -> dict[str, tuple[str, str]]:
    """Map case id -> (fold, path of ``validation/<case>.npz``) over the cross-validation folds.

    Only numbered folds count: fold ``all`` validates on its own training cases, so its probabilities are not
    out-of-sample.
    """
    if folds is None:
        folds = sorted(re.fullmatch(r"fold_(\d+)", d).group(1) for d in os.listdir(results_folder)
                       if re.fullmatch(r"fold_(\d+)", d) and isdir(join(results_folder, d)))
    if any(f == "all" for f in folds):
        raise ValueError("Fold 'all' validates on its own training data, so its probabilities are not out-of-fold; "
                         "use the cross-validation folds 0-4.")
    found: dict[str, tuple[str, str]] = {}
    for fold in folds:
        val = join(results_folder, f"fold_{fold}", "validation")
        files = sorted(glob(join(val, "*.npz")))
        if not files:
            raise FileNotFoundError(f"No probabilities in {val}. Run the validation with exported probabilities: "
                                    f"nnUNetv2_train ... {fold} --val --npz (or train with --npz).")
        for path in files:
            case = basename(path)[:-len(".npz")]
            if case in found:
                raise ValueError(f"Case {case} has validation probabilities in fold {found[case][0]} and fold "
                                 f"{fold}; the folds must not overlap (use nnU-Net's splits_final.json).")
            found[case] = (fold, path)
    if not found:
        raise FileNotFoundError(f"No fold_<n>/validation/*.npz found in {results_folder}. Train with "
                                f"nnUNetv2_train DATASET CONFIG FOLD --npz for folds 0-4 first.")
    return found


def _fold_sort_key(fold: str):
    return (0, int(fold), "") if fold.isdigit() else (1, 0, fold)


def _preview(cases: list[str], n: int = 5) -> str:
    return ", ".join(cases[:n]) + (f", ... ({len(cases) - n} more)" if len(cases) > n else "")


def load_splits(dataset_name: str) -> list[dict] | None:
    """nnU-Net's ``$nnUNet_preprocessed/<dataset>/splits_final.json`` (the cross-validation the folds were trained
    on), or None when it is not found."""
    root = os.environ.get("nnUNet_preprocessed")
    path = join(root, dataset_name, "splits_final.json") if root else None
    if path is None or not isfile(path):
        return None
    splits = load_json(path)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and isinstance(s.get("val"), list) for s in splits):
        raise ValueError(f"{path} is not an nnU-Net splits file (a list of {{'train': [...], 'val': [...]}}).")
    return splits


def check_coverage(results_folder: str, dataset_name: str, probs_files: dict[str, tuple[str, str]],
                   label_cases: list[str], folds: list[str] | None) -> None:
    """Refuse to rank a part of the dataset silently.

    Without ``folds`` (every fold present), the out-of-fold probabilities must cover every training case: the
    validation cases of all folds of ``splits_final.json`` if it is found, else every case of the label folder. With
    ``folds`` (the user restricted them with ``-f``), each requested fold must cover its own validation cases (when
    ``splits_final.json`` is found).

    Raises:
        ValueError: naming the missing cases and folds and the ``nnUNetv2_train`` command that produces them.
    """
    splits = load_splits(dataset_name)
    fold_of: dict[str, str] = {}
    if splits is not None:
        for i, split in enumerate(splits):
            for case in split["val"]:
                fold_of[case] = str(i)
    if folds is None:
        expected = set(fold_of) if splits is not None else set(label_cases)
    elif splits is not None:
        expected = {c for c, f in fold_of.items() if f in {str(x) for x in folds}}
    else:
        return
    missing = sorted(expected - set(probs_files))
    if not missing:
        return

    parts = basename(os.path.normpath(results_folder)).split("__")
    trainer, plans, configuration = parts if len(parts) == 3 else ("TRAINER", "PLANS", "CONFIG")
    train = f"nnUNetv2_train {dataset_name} {configuration} FOLD -tr {trainer} -p {plans}"
    present = sorted({f for f, _ in probs_files.values()}, key=_fold_sort_key)
    if splits is not None:
        missing_folds = sorted({fold_of[c] for c in missing}, key=_fold_sort_key)
    else:  # nnU-Net's default cross-validation: folds 0-4
        missing_folds = [str(f) for f in range(5) if str(f) not in present] or present
    finished = [f for f in missing_folds
                if isfile(join(results_folder, f"fold_{f}", "checkpoint_final.pth"))]
    to_train = [f for f in missing_folds if f not in finished]
    todo = []
    if to_train:
        todo.append(f"train the missing fold(s) with `{train} --npz` (FOLD = {', '.join(to_train)})")
    if finished:
        todo.append(f"export the validation probabilities of the finished fold(s) with `{train} --val --npz` "
                    f"(FOLD = {', '.join(finished)})")
    source = "splits_final.json" if splits is not None else "the label folder"
    what = "training cases" if folds is None else f"validation cases of fold(s) {', '.join(str(f) for f in folds)}"
    msg = (f"The out-of-fold probabilities in {results_folder} cover {len(expected) - len(missing)} of "
           f"{len(expected)} {what} ({source}): {len(missing)} case(s) have none ({_preview(missing)}), "
           f"from fold(s) {', '.join(missing_folds)}. Ranking only a part of the dataset would leave the other cases "
           f"out silently. To fix it, {' and '.join(todo)}.")
    if folds is None and present:
        msg += (f" To rank only the validation cases of the folds present instead, restrict the folds explicitly: "
                f"-f {' '.join(present)}.")
    raise ValueError(msg)


def _read_results_folder(results_folder: str) -> tuple[dict, str]:
    """Check that ``results_folder`` is an nnU-Net results folder; returns (its dataset.json, the dataset name)."""
    if not isdir(results_folder):
        raise FileNotFoundError(f"Results folder {results_folder} does not exist.")
    for f in ("dataset.json", "plans.json"):
        if not isfile(join(results_folder, f)):
            raise FileNotFoundError(f"{join(results_folder, f)} is missing; -i must be an nnU-Net results folder "
                                    f"(<trainer>__<plans>__<configuration>).")
    dataset_json = load_json(join(results_folder, "dataset.json"))
    dataset_name = load_json(join(results_folder, "plans.json"))["dataset_name"]
    return dataset_json, dataset_name


def _default_folders(dataset_name: str, labels_folder: str | None, output_folder: str | None) -> tuple[str, str]:
    """The label folder (default ``$nnUNet_raw/<dataset>/labelsTr``, must exist) and the output folder (default
    ``$nnUNet_preprocessed/<dataset>/label_issues``)."""
    if labels_folder is None:
        if not os.environ.get("nnUNet_raw"):
            raise FileNotFoundError("nnUNet_raw is not set; pass the label folder with -l.")
        labels_folder = join(os.environ["nnUNet_raw"], dataset_name, "labelsTr")
    if not isdir(labels_folder):
        raise FileNotFoundError(f"Label folder {labels_folder} does not exist.")
    if output_folder is None:
        if not os.environ.get("nnUNet_preprocessed"):
            raise FileNotFoundError("nnUNet_preprocessed is not set; pass the output folder with -o.")
        output_folder = join(os.environ["nnUNet_preprocessed"], dataset_name, "label_issues")
    return labels_folder, output_folder


def _load_case(probs_path: str, label_path: str, dataset_json: dict, num_classes: int) -> tuple[np.ndarray, Any, Any]:
    """One case's probabilities (C, X, Y[, Z]), label and label properties, checked against each other."""
    probs = np.load(probs_path)["probabilities"]
    seg, props = read_label(label_path, dataset_json)
    if probs.shape[0] != num_classes:
        raise ValueError(f"{probs_path} has {probs.shape[0]} classes, dataset.json {num_classes}.")
    if seg.shape != probs.shape[1:]:
        raise ValueError(f"Label {label_path} has shape {seg.shape} but its probabilities "
                         f"{probs.shape[1:]}; were the folds trained on these labels?")
    return probs, seg, props


def _score_cases(probs_files: dict[str, tuple[str, str]], label_files: dict[str, str], dataset_json: dict,
                 num_classes: int, ignore_label: int | None, maps_folder: str, method: str,
                 show_progress: bool) -> tuple[np.ndarray, dict[str, dict]]:
    """Score every case and write its issue map into ``maps_folder``; returns (class thresholds, {case: scores}).

    Two passes over the cases: dataset-wide per-class thresholds first, then the issue maps and per-case scores.
    """
    file_ending = dataset_json["file_ending"]

    def load(case):
        return _load_case(probs_files[case][1], label_files[case], dataset_json, num_classes)

    cases = sorted(probs_files)
    # pass 1: dataset-wide per-class thresholds (streamed so 3D datasets need one case in memory at a time)
    acc = ClassThresholds(num_classes, ignore_label)
    for case in tqdm(cases, desc="thresholds", disable=not show_progress):
        probs, seg, _ = load(case)
        acc.update(probs, seg)
    thresholds = acc.thresholds()

    # pass 2: issue maps and per-case scores
    os.makedirs(maps_folder, exist_ok=True)
    scores = {}
    for case in tqdm(cases, desc="issues", disable=not show_progress):
        probs, seg, props = load(case)
        issues = find_label_issues(probs, seg, thresholds, method=method, ignore_label=ignore_label)
        scores[case] = case_quality(probs, seg, issues, ignore_label=ignore_label)
        write_label_atomic(issues.astype(np.uint8), join(maps_folder, case + file_ending), props, dataset_json)
    return thresholds, scores


def _write_tables(rows: list[dict], output_folder: str, summary: dict[str, Any]) -> None:
    """Write ``label_issues.csv`` (the rows) and ``label_issues.json`` (``summary``) into ``output_folder``."""
    lines = [",".join(COLUMNS)]
    for r in rows:
        lines.append(",".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS))
    write_text_atomic("\n".join(lines) + "\n", join(output_folder, "label_issues.csv"))
    write_json_atomic(summary, join(output_folder, "label_issues.json"))


def find_issues(results_folder: str, labels_folder: str | None = None, output_folder: str | None = None,
                folds: list[str] | None = None, method: str = "confident_learning",
                show_progress: bool = True) -> list[dict]:
    """Score every case with out-of-fold probabilities and write the ranked table and the issue maps.

    Args:
        results_folder: ``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>``.
        labels_folder: the (noisy) labels the folds were trained on; default ``$nnUNet_raw/<dataset>/labelsTr``.
        output_folder: default ``$nnUNet_preprocessed/<dataset>/label_issues``.
        folds: folds to read (default: every ``fold_<n>`` present, which must then cover every training case; see
            :func:`check_coverage`).
        method: see :func:`nnunet_noisylabels.baselines.label_issues.find_label_issues`.
        show_progress: tqdm progress bars.

    Returns:
        The table rows, worst case first.

    Raises:
        FileNotFoundError: missing folders, files or probabilities.
        ValueError: bad input, or probabilities that do not cover every training case (see :func:`check_coverage`).
    """
    dataset_json, dataset_name = _read_results_folder(results_folder)
    file_ending = dataset_json["file_ending"]
    ignore_label = dataset_json["labels"].get("ignore")
    num_classes = len([v for k, v in dataset_json["labels"].items() if k != "ignore"])
    labels_folder, output_folder = _default_folders(dataset_name, labels_folder, output_folder)

    probs_files = collect_validation_probabilities(results_folder, folds)
    label_files = {c: join(labels_folder, c + file_ending) for c in probs_files}
    missing = [c for c, p in label_files.items() if not isfile(p)]
    if missing:
        raise FileNotFoundError(f"No label file for {len(missing)} case(s) with probabilities, e.g. "
                                f"{label_files[missing[0]]}. Is -l the labelsTr the folds were trained on?")
    label_cases = sorted(basename(p)[:-len(file_ending)] for p in glob(join(labels_folder, "*" + file_ending)))
    check_coverage(results_folder, dataset_name, probs_files, label_cases, folds)

    thresholds, scores = _score_cases(probs_files, label_files, dataset_json, num_classes, ignore_label,
                                      join(output_folder, "issue_maps"), method, show_progress)
    rows = []
    for rank, case in enumerate(rank_cases(scores), start=1):
        rows.append({"rank": rank, "case": case, **scores[case], "fold": probs_files[case][0]})
    unscored = [c for c in label_cases if c not in scores]
    if folds is not None and unscored:
        print(f"Scored {len(rows)} of {len(label_cases)} training cases: only the validation cases of fold(s) "
              f"{' '.join(str(f) for f in folds)} (-f); the other {len(unscored)} are listed under unscored_cases in "
              f"label_issues.json.")
    else:
        print(f"Scored {len(rows)} of {len(label_cases)} training cases.")

    _write_tables(rows, output_folder, {
        "method": method,
        "reference": "Northcutt et al. JAIR 2021; Zhang et al. MICCAI 2020",
        "results_folder": os.path.abspath(results_folder),
        "labels_folder": os.path.abspath(labels_folder),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "class_thresholds": {str(k): (None if np.isinf(t) else float(t)) for k, t in enumerate(thresholds)},
        "sort_key": "label_quality (ascending: worst first)",
        "unscored_cases": unscored,
        "cases": rows,
    })
    return rows
