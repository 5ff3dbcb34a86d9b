"""The baseline trainers inside nnU-Net: loss wiring and issue-map alignment (in process), and stock
``nnUNetv2_train`` runs on a tiny synthetic dataset (slow)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import console_script, run

from nnunet_noisylabels._autoenv import ext_trainer_dir
from nnunet_noisylabels.common.synthetic import write_synthetic_dataset

DATASET = "Dataset991_NLBaselines"
# one epoch of two iterations: enough to go through every step of nnU-Net's training loop and validation
TINY_BUDGET = {"nnUNet_nl_epochs": "1", "nnUNet_nl_iterations": "2", "nnUNet_nl_val_iterations": "1"}


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A planned and preprocessed 6-case 32x32 2D PNG dataset; environment dict for nnU-Net subprocesses."""
    root = tmp_path_factory.mktemp("nnunet")
    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "nnUNet_extTrainer": ext_trainer_dir(), "nnUNet_compile": "0",
           "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": "1", **TINY_BUDGET,
           "PYTHONPATH": os.pathsep.join(p for p in [str(ext_trainer_dir().rsplit(os.sep, 2)[0]),
                                                     os.environ.get("PYTHONPATH", "")] if p)}
    raw = write_synthetic_dataset(env["nnUNet_raw"], 991, name="NLBaselines", dim=2, num_cases=6, num_clean=0,
                                  shape=(32, 32))
    # planning refuses nnUNet_n_proc_DA=0 (it sets torch's thread count from it)
    plan_env = {k: v for k, v in env.items() if k != "nnUNet_n_proc_DA"}
    run([console_script("nnUNetv2_plan_and_preprocess"), "-d", "991", "-c", "2d", "-np", "1"], plan_env)
    return {"env": env, "root": root, "raw": raw, "pre": root / "preprocessed" / DATASET}


def _copy_labels_as_issue_maps(raw, dst):
    """Issue maps equal to the labels: flags on every foreground voxel, easy to check for alignment."""
    dst.mkdir(parents=True, exist_ok=True)
    for label in sorted((raw / "labelsTr").glob("*.png")):
        shutil.copy(label, dst / label.name)


def _make_trainer(planned, name, monkeypatch):
    from nnunet_noisylabels.trainers import all_trainer_classes

    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA", *TINY_BUDGET):
        monkeypatch.setenv(k, planned["env"][k])
    cls = all_trainer_classes()[name]
    plans = json.loads((planned["pre"] / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # set by nnU-Net's run_training
    dataset_json = json.loads((planned["pre"] / "dataset.json").read_text())
    return cls(plans, "2d", 0, dataset_json, torch.device("cpu"))


@pytest.mark.parametrize("name", ["nnUNetTrainerGCE", "nnUNetTrainerNRDice", "nnUNetTrainerCLSLR"])
def test_trainer_losses_are_wrapped_for_deep_supervision(planned, monkeypatch, name):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    trainer = _make_trainer(planned, name, monkeypatch)
    loss = trainer._build_loss()
    assert isinstance(loss, DeepSupervisionWrapper)
    torch.manual_seed(0)
    outputs = [torch.randn(2, 2, 16, 16, requires_grad=True), torch.randn(2, 2, 8, 8)]
    targets = [torch.randint(0, 2, (2, 1, 16, 16)), torch.randint(0, 2, (2, 1, 8, 8))]
    value = loss(outputs, targets)
    value.backward()
    assert torch.isfinite(value) and outputs[0].grad.abs().sum() > 0
    # the loss is not nnU-Net's default any more (CLSLR without flags is Dice + CE, like the default)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    default = nnUNetTrainer._build_loss(trainer)(outputs, targets).item()
    if name == "nnUNetTrainerCLSLR":
        assert abs(default - value.item()) < 1e-5
        flagged = [torch.cat([t, torch.ones_like(t)], 1) for t in targets]
        assert abs(loss(outputs, flagged).item() - value.item()) > 1e-3
    else:
        assert abs(default - value.item()) > 1e-3


def test_budget_variant_reads_the_environment(planned, monkeypatch):
    trainer = _make_trainer(planned, "nnUNetTrainerGCE_budget", monkeypatch)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (1, 2, 1)
    assert trainer.gce_q == 0.7


def test_clslr_issue_flags_reach_the_loss_aligned_with_labels(planned, monkeypatch, tmp_path):
    """Through nnU-Net's own augmentation and deep-supervision downsampling, flags stay on the labels they mark."""
    maps = tmp_path / "maps"
    _copy_labels_as_issue_maps(planned["raw"], maps)
    monkeypatch.setenv("nnUNet_nl_issue_maps", str(maps))
    trainer = _make_trainer(planned, "nnUNetTrainerCLSLR", monkeypatch)
    trainer.output_folder = str(tmp_path / "out")
    os.makedirs(trainer.output_folder)
    trainer.on_train_start()
    # preprocessed geometry: identical to nnU-Net's preprocessed labels
    folder = trainer.folder_with_segs_from_previous_stage
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, None,
                                    folder_with_segs_from_previous_stage=folder)
    for case in dataset.identifiers:
        _, seg, seg_prev, _ = dataset.load_case(case)
        np.testing.assert_array_equal(np.asarray(seg_prev), np.asarray(seg[0]) > 0)
    # augmented batches: target (B, 2, ...) at every scale, flags == foreground
    batch = next(trainer.dataloader_train)
    assert isinstance(batch["target"], list) and len(batch["target"]) > 1
    for t in batch["target"]:
        assert t.shape[1] == 2
        np.testing.assert_array_equal(t[:, 1].numpy(), (t[:, 0] > 0).numpy())
    assert batch["target"][0][:, 1].sum() > 0
    # a train step uses the flags: smoothing changes the loss
    out = trainer.train_step(batch)
    assert np.isfinite(out["loss"])
    trainer.on_train_end()


def test_clslr_reports_missing_issue_maps(planned, monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_nl_issue_maps", str(tmp_path / "nowhere"))
    trainer = _make_trainer(planned, "nnUNetTrainerCLSLR", monkeypatch)
    with pytest.raises(FileNotFoundError, match="nnUNetv2_nl_find_issues"):
        trainer.prepare_issue_maps()
    (tmp_path / "partial").mkdir()
    shutil.copy(planned["raw"] / "labelsTr" / "case_000.png", tmp_path / "partial")
    monkeypatch.setenv("nnUNet_nl_issue_maps", str(tmp_path / "partial"))
    with pytest.raises(FileNotFoundError, match="have no issue map"):
        trainer.prepare_issue_maps()


def _train(env, trainer, fold="0"):
    proc = run([console_script("nnUNetv2_train"), "991", "2d", fold, "-tr", trainer, "-device", "cpu"], env)
    assert f"Using trainer '{trainer}'" in proc.stdout or trainer in proc.stdout
    out = os.path.join(env["nnUNet_results"], DATASET, f"{trainer}__nnUNetPlans__2d", f"fold_{fold}")
    assert os.path.isfile(os.path.join(out, "checkpoint_final.pth"))
    summary = json.loads(open(os.path.join(out, "validation", "summary.json")).read())
    assert "foreground_mean" in summary
    return out, proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["nnUNetTrainerGCE_budget", "nnUNetTrainerNRDice_budget"])
def test_loss_trainers_run_through_nnunetv2_train(planned, trainer):
    _train(planned["env"], trainer)


@pytest.mark.slow
def test_clslr_runs_through_nnunetv2_train_with_default_issue_maps(planned):
    env = {k: v for k, v in planned["env"].items() if k != "nnUNet_nl_issue_maps"}
    missing = subprocess.run([console_script("nnUNetv2_train"), "991", "2d", "0", "-tr",
                              "nnUNetTrainerCLSLR_budget", "-device", "cpu"], env=env, capture_output=True,
                             text=True)
    assert missing.returncode != 0 and "nnUNetv2_nl_find_issues" in missing.stderr
    # where nnUNetv2_nl_find_issues writes by default
    _copy_labels_as_issue_maps(planned["raw"], planned["pre"] / "label_issues" / "issue_maps")
    out, stdout = _train(env, "nnUNetTrainerCLSLR_budget")
    assert len(os.listdir(os.path.join(out, "issue_maps_preprocessed"))) == 6


def test_coteaching_trains_two_networks_on_peer_selected_voxels(planned, monkeypatch, tmp_path):
    pytest.importorskip("nnunet_noisylabels.robust.twin")
    trainer = _make_trainer(planned, "nnUNetTrainerCoTeaching", monkeypatch)
    trainer.output_folder = str(tmp_path / "out")
    os.makedirs(trainer.output_folder)
    trainer.on_train_start()
    members = trainer.network.members
    assert len(members) == 2
    p0, p1 = (next(m.parameters()).detach().clone() for m in members)
    assert not torch.equal(p0, p1)  # different initializations
    trainer.current_epoch = trainer.num_epochs  # full forget rate
    assert trainer.current_forget_rate() == pytest.approx(trainer.coteaching_forget_rate)
    batch = next(trainer.dataloader_train)
    out = trainer.train_step(batch)
    assert np.isfinite(out["loss"])
    assert not torch.equal(p0, next(members[0].parameters())) and not torch.equal(p1, next(members[1].parameters()))
    # eval mode: one tensor, the mean of both networks (what nnU-Net's predictor and --val consume)
    trainer.network.eval()
    trainer.set_deep_supervision_enabled(False)
    with torch.no_grad():
        x = batch["data"][:1]
        mean = trainer.network(x)
        assert torch.allclose(mean, (members[0](x) + members[1](x)) / 2, atol=1e-5)
    trainer.on_train_end()


@pytest.mark.slow
def test_coteaching_trains_and_predicts_through_stock_nnunet(planned, tmp_path):
    pytest.importorskip("nnunet_noisylabels.robust.twin")
    env = planned["env"]
    _train(env, "nnUNetTrainerCoTeaching_budget")
    out = tmp_path / "pred"
    run([console_script("nnUNetv2_predict"), "-i", str(planned["raw"] / "imagesTr"), "-o", str(out), "-d", "991",
         "-c", "2d", "-f", "0", "-tr", "nnUNetTrainerCoTeaching_budget", "-device", "cpu", "-npp", "0", "-nps",
         "0", "--disable_progress_bar"], env)
    assert len(list(out.glob("*.png"))) == 6


@pytest.mark.slow
def test_user_flow_crossvalidation_find_issues_then_clslr(planned, monkeypatch, tmp_path):
    """5-fold nnUNetv2_train --npz, nnUNetv2_nl_find_issues on its real output, then nnUNetTrainerCLSLR."""
    from skimage import io

    from nnunet_noisylabels.cli.find_issues import main

    env = planned["env"]
    for fold in range(5):
        run([console_script("nnUNetv2_train"), "991", "2d", str(fold), "-tr", "nnUNetTrainer_budget", "-device",
             "cpu", "--npz"], env)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, env[k])
    out = tmp_path / "issues"
    assert main(["-d", "991", "-c", "2d", "-tr", "nnUNetTrainer_budget", "-o", str(out), "--no_pbar"]) == 0
    table = json.loads((out / "label_issues.json").read_text())
    assert sorted(r["case"] for r in table["cases"]) == [f"case_{i:03d}" for i in range(6)]
    for r in table["cases"]:
        issue_map = io.imread(out / "issue_maps" / f"{r['case']}.png")
        label = io.imread(planned["raw"] / "labelsTr" / f"{r['case']}.png")
        assert issue_map.shape == label.shape and int(issue_map.sum()) == r["num_issues"]
    _train({**env, "nnUNet_nl_issue_maps": str(out / "issue_maps")}, "nnUNetTrainerCLSLR_budget", fold="1")


@pytest.mark.slow
def test_clslr_issue_maps_follow_transpose_and_resampling_in_3d(tmp_path, monkeypatch):
    """Anisotropic 3D NIfTI with mixed spacings: nnU-Net transposes and resamples; the issue maps must follow."""
    import SimpleITK as sitk

    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre"),
           "nnUNet_results": str(tmp_path / "res"), "nnUNet_extTrainer": ext_trainer_dir(), "nnUNet_compile": "0",
           "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "1"}
    raw = write_synthetic_dataset(env["nnUNet_raw"], 992, name="NLBaselines3D", dim=3, num_cases=5, num_clean=0,
                                  shape=(16, 20, 12))
    maps = tmp_path / "maps"
    maps.mkdir()
    for i, label in enumerate(sorted((raw / "labelsTr").glob("*.nii.gz"))):
        # coarse last array axis (nnU-Net transposes it first); two spacings, so some cases are resampled
        spacing_xyz = (2.5 + 0.75 * (i % 2), 1.0, 0.8)
        image = raw / "imagesTr" / label.name.replace(".nii.gz", "_0000.nii.gz")
        for path in (image, label):
            img = sitk.ReadImage(str(path))
            img.SetSpacing(spacing_xyz)
            sitk.WriteImage(img, str(path))
        sitk.WriteImage(sitk.ReadImage(str(label)), str(maps / label.name))
    run([console_script("nnUNetv2_plan_and_preprocess"), "-d", "992", "-c", "3d_fullres", "-np", "1"], env)
    pre = tmp_path / "pre" / "Dataset992_NLBaselines3D"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    assert plans["transpose_forward"] != [0, 1, 2]
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, env[k])
    monkeypatch.setenv("nnUNet_nl_issue_maps", str(maps))
    from nnunet_noisylabels.baselines.trainers import nnUNetTrainerCLSLR

    plans["continue_training"] = False
    trainer = nnUNetTrainerCLSLR(plans, "3d_fullres", 0, json.loads((pre / "dataset.json").read_text()),
                                 torch.device("cpu"))
    trainer.output_folder = str(tmp_path / "out")
    os.makedirs(trainer.output_folder)
    folder = trainer.prepare_issue_maps()
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, None,
                                    folder_with_segs_from_previous_stage=folder)
    resampled = 0
    for case in dataset.identifiers:
        _, seg, seg_prev, props = dataset.load_case(case)
        resampled += tuple(seg.shape[1:]) != tuple(props["shape_after_cropping_and_before_resampling"])
        np.testing.assert_array_equal(np.asarray(seg_prev), np.asarray(seg[0]) > 0)
    assert resampled > 0
