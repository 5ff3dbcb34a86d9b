"""End to end through the stock nnU-Net console scripts, with a plugin trainer, on CPU."""
from __future__ import annotations

import json

import pytest
from conftest import console_script, run

from nnunet_noisylabels.common.evaluation import evaluate_folder


@pytest.mark.slow
def test_plan_train_predict_with_plugin_trainer(dataset_2d, nnunet_env, tmp_path):
    run([console_script("nnUNetv2_plan_and_preprocess"), "-d", "1", "-c", "2d", "-np", "1"], nnunet_env)
    proc = run([console_script("nnUNetv2_train"), "1", "2d", "all", "-tr", "nnUNetTrainer_debug",
                "-device", "cpu"], nnunet_env)
    assert "Using trainer 'nnUNetTrainer_debug'" in proc.stdout
    out = tmp_path / "pred"
    run([console_script("nnUNetv2_predict"), "-i", str(dataset_2d / "imagesTs"), "-o", str(out), "-d", "1",
         "-c", "2d", "-f", "all", "-tr", "nnUNetTrainer_debug", "-device", "cpu", "-npp", "0", "-nps", "0",
         "--disable_progress_bar"], nnunet_env)
    dj = json.loads((dataset_2d / "dataset.json").read_text())
    summary = evaluate_folder(dataset_2d / "labelsTs", out, dj)
    assert len(summary["metric_per_case"]) == 4
    # 60 iterations on bright ellipses: far above what an untrained network or an empty prediction scores (0.0).
    # The training labels are dilated by 2 px, so a perfect score against the clean test labels is not expected.
    assert summary["foreground_mean"]["Dice"] > 0.7, summary["foreground_mean"]
