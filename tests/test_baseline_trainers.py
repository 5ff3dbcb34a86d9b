"""The baseline trainers inside nnU-Net: loss wiring (fast) and stock ``nnUNetv2_train`` runs (slow, tiny)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY_TRAINERS = """
from nnunet_noisylabels.trainers.baselines import nnUNetTrainerCLSLR, nnUNetTrainerGCE, nnUNetTrainerNRDice


def _tiny(cls):
    class Tiny(cls):
        def __init__(self, plans, configuration, fold, dataset_json, device=None):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = 1
            self.num_iterations_per_epoch = 2
            self.num_val_iterations_per_epoch = 1
    Tiny.__name__ = Tiny.__qualname__ = cls.__name__ + "_tiny"
    return Tiny


nnUNetTrainerGCE_tiny = _tiny(nnUNetTrainerGCE)
nnUNetTrainerNRDice_tiny = _tiny(nnUNetTrainerNRDice)
nnUNetTrainerCLSLR_tiny = _tiny(nnUNetTrainerCLSLR)
"""


def _write_png_dataset(raw: Path, n: int = 6, size: int = 32, seed: int = 0) -> Path:
    from skimage import io

    rng = np.random.default_rng(seed)
    ds = raw / "Dataset991_NLBaselines"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(5, 8)
        label = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2).astype(np.uint8)
        image = np.clip(60 + 120 * label + rng.normal(0, 20, label.shape), 0, 255).astype(np.uint8)
        io.imsave(ds / "imagesTr" / f"case_{i:03d}_0000.png", image, check_contrast=False)
        io.imsave(ds / "labelsTr" / f"case_{i:03d}.png", label, check_contrast=False)
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "x"}, "labels": {"background": 0, "disc": 1}, "numTraining": n,
        "file_ending": ".png"}))
    return ds


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory):
    """A planned and preprocessed tiny 2D PNG dataset, and the environment for nnU-Net subprocesses."""
    root = tmp_path_factory.mktemp("nnunet")
    ext = root / "ext"
    ext.mkdir()
    (ext / "tiny_baseline_trainers.py").write_text(TINY_TRAINERS)
    env = {**os.environ, "PYTHONPATH": str(REPO), "nnUNet_raw": str(root / "raw"),
           "nnUNet_preprocessed": str(root / "preprocessed"), "nnUNet_results": str(root / "results"),
           "nnUNet_extTrainer": os.pathsep.join([str(REPO / "nnunet_noisylabels" / "nnunet_ext"), str(ext)]),
           "nnUNet_compile": "0", "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": "1"}
    ds = _write_png_dataset(root / "raw")
    # planning refuses nnUNet_n_proc_DA=0 (it sets torch's thread count from it)
    plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}
    proc = subprocess.run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", "991", "-c", "2d", "-np", "1"],
                          env=plan_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"env": env, "root": root, "raw": ds, "pre": root / "preprocessed" / ds.name}


def _train(env, trainer, fold="0"):
    proc = subprocess.run([str(BIN / "nnUNetv2_train"), "991", "2d", fold, "-tr", trainer, "-device", "cpu"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = Path(env["nnUNet_results"]) / "Dataset991_NLBaselines" / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"
    assert (out / "checkpoint_final.pth").is_file()
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert "foreground_mean" in summary
    return out, proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["nnUNetTrainerGCE_tiny", "nnUNetTrainerNRDice_tiny"])
def test_loss_trainers_run_through_nnunetv2_train(nnunet_env, trainer):
    _train(nnunet_env["env"], trainer)


@pytest.mark.slow
def test_clslr_refuses_to_start_without_issue_maps(nnunet_env):
    env = {**nnunet_env["env"], "nnUNet_nl_issue_maps": str(nnunet_env["root"] / "nowhere")}
    proc = subprocess.run([str(BIN / "nnUNetv2_train"), "991", "2d", "0", "-tr", "nnUNetTrainerCLSLR_tiny",
                           "-device", "cpu"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "nnUNetv2_nl_find_issues" in proc.stderr


@pytest.mark.slow
def test_clslr_trains_with_issue_maps_from_the_default_folder(nnunet_env):
    from skimage import io

    maps = nnunet_env["pre"] / "label_issues" / "issue_maps"
    maps.mkdir(parents=True, exist_ok=True)
    for label in sorted((nnunet_env["raw"] / "labelsTr").glob("*.png")):
        io.imsave(maps / label.name, io.imread(label), check_contrast=False)  # flag the whole object
    out, stdout = _train(nnunet_env["env"], "nnUNetTrainerCLSLR_tiny")
    prepared = sorted((out / "issue_maps_preprocessed").iterdir())
    assert len(prepared) == 6


def test_prepared_issue_maps_align_with_preprocessed_labels(nnunet_env, monkeypatch):
    """An issue map equal to the label must come out equal to nnU-Net's preprocessed label."""
    from skimage import io

    maps = nnunet_env["root"] / "align_maps"
    maps.mkdir(exist_ok=True)
    for label in sorted((nnunet_env["raw"] / "labelsTr").glob("*.png")):
        io.imsave(maps / label.name, io.imread(label), check_contrast=False)
    for k, v in nnunet_env["env"].items():
        if k.startswith("nnUNet"):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("nnUNet_nl_issue_maps", str(maps))
    trainer = _make_trainer(nnunet_env, "nnUNetTrainerCLSLR", monkeypatch)
    trainer.output_folder = str(nnunet_env["root"] / "align_out")
    os.makedirs(trainer.output_folder, exist_ok=True)
    folder = trainer.prepare_issue_maps()
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, None, folder_with_segs_from_previous_stage=folder)
    for case in dataset.identifiers:
        _, seg, seg_prev, _ = dataset.load_case(case)
        assert seg_prev.shape == seg.shape[1:]
        np.testing.assert_array_equal(np.asarray(seg_prev), np.asarray(seg[0]) > 0)


def _make_trainer(nnunet_env, name, monkeypatch):
    import importlib

    import nnunetv2.paths

    # nnunetv2.paths reads the environment at import time
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setattr(nnunetv2.paths, k, nnunet_env["env"][k])
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as base
    monkeypatch.setattr(base, "nnUNet_preprocessed", nnunet_env["env"]["nnUNet_preprocessed"])
    monkeypatch.setattr(base, "nnUNet_results", nnunet_env["env"]["nnUNet_results"])
    cls = getattr(importlib.import_module("nnunet_noisylabels.trainers.baselines"), name)
    plans = json.loads((nnunet_env["pre"] / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((nnunet_env["pre"] / "dataset.json").read_text())
    return cls(plans, "2d", 0, dataset_json, torch.device("cpu"))


@pytest.mark.parametrize("name", ["nnUNetTrainerGCE", "nnUNetTrainerNRDice", "nnUNetTrainerCLSLR"])
def test_trainer_losses_are_wrapped_for_deep_supervision(nnunet_env, monkeypatch, name):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    trainer = _make_trainer(nnunet_env, name, monkeypatch)
    loss = trainer._build_loss()
    assert isinstance(loss, DeepSupervisionWrapper)
    torch.manual_seed(0)
    outputs = [torch.randn(2, 2, 16, 16, requires_grad=True), torch.randn(2, 2, 8, 8)]
    targets = [torch.randint(0, 2, (2, 1, 16, 16)), torch.randint(0, 2, (2, 1, 8, 8))]
    value = loss(outputs, targets)
    value.backward()
    assert torch.isfinite(value) and outputs[0].grad.abs().sum() > 0
