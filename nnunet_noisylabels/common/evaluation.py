"""Folder-level evaluation of predictions with nnU-Net's own metric code (Dice, IoU, TP/FP/FN per class)."""
from __future__ import annotations

import os
from pathlib import Path

from nnunet_noisylabels.common.raw_dataset import reader_writer


def evaluate_folder(folder_ref: str | os.PathLike, folder_pred: str | os.PathLike, dataset_json: dict,
                    output_file: str | os.PathLike | None = None, num_processes: int = 1) -> dict:
    """Compare every prediction in ``folder_pred`` with the reference of the same name in ``folder_ref``.

    Returns nnU-Net's summary dict (``mean``, ``foreground_mean``, ``metric_per_case``) and writes it as JSON to
    ``output_file`` (default: ``folder_pred/summary.json``).
    """
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder

    ending = dataset_json["file_ending"]
    example = next(p for p in Path(folder_ref).iterdir() if p.name.endswith(ending))
    rw = reader_writer(dataset_json, example)
    labels = sorted(int(v) for k, v in dataset_json["labels"].items() if k not in ("background", "ignore"))
    output_file = str(output_file or Path(folder_pred) / "summary.json")
    return compute_metrics_on_folder(str(folder_ref), str(folder_pred), output_file, rw, ending, labels,
                                     ignore_label=dataset_json["labels"].get("ignore"), num_processes=num_processes)
