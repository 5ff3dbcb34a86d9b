"""Label revision, ``--method ensemble`` and ``--realign``."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from revision_support import (FollowingStep, ProbFollowingStep, ProbStep, TruthStep, make_dataset, read_array, top_half,
                              tree_digest, write_png)

from nnunet_noisylabels.cli.revise import main
from nnunet_noisylabels.common.metrics import dice
from nnunet_noisylabels.revision import api as rv
from nnunet_noisylabels.revision import base as rv_base


def test_ensemble_revises_with_the_mean_of_both_models(toy2d):
    """Each member alone mislabels half of every image (a different half); the ensemble's labels are the truth."""
    ds, truth = toy2d
    steps = {"nin": ProbStep(truth, top_half), "clean_only": ProbStep(truth, lambda t: ~top_half(t))}
    logged = []
    manifest = rv.revise_dataset(ds, method="ensemble", model_step=steps, progress=False, log=logged.append,
                                 report=False, keep_consistent=False)
    # the members' own labels differ at every voxel: no agreement on the class, and the user is warned
    assert manifest["model"]["member_agreement_dice"] == {"c1": 0.0}
    assert any(line.startswith("Warning: the two revision models disagree on {'c1': 0.0}") for line in logged)
    assert [a.method for a in steps["nin"].calls] == ["nin"]
    assert [a.method for a in steps["clean_only"].calls] == ["clean_only"]
    raw = ds.parent
    assert manifest["method"] == "ensemble"
    assert manifest["aux_dataset"] == ["Dataset500_ToyNIN", "Dataset501_ToyNLclean"]
    assert set(manifest["model"]["members"]) == {"nin", "clean_only"}
    for i in range(2, 6):
        c = f"toy_{i:03d}"
        true = read_array(truth / f"{c}.png")
        np.testing.assert_array_equal(read_array(ds / "labelsTr" / f"{c}.png"), true)
        for aux in ("Dataset500_ToyNIN", "Dataset501_ToyNLclean"):
            member = raw / aux / "predictionsTs"
            assert (read_array(member / f"{c}.png") != true).any()  # each member alone is wrong somewhere
            assert not (member / f"{c}.npz").exists()  # merged probabilities are not kept
    # clean cases keep their clean label; originals preserved
    np.testing.assert_array_equal(read_array(ds / "labelsTr" / "toy_000.png"),
                                  read_array(ds / "labelsTr_clean" / "toy_000.png"))
    assert len(list((ds / "labelsTr_imperfect").iterdir())) == 6


def test_ensemble_without_probabilities_fails_and_leaves_labels(toy2d):
    ds, truth = toy2d
    before = tree_digest(ds / "labelsTr")
    with pytest.raises(RuntimeError, match="Probabilities of 'toy_002' missing"):
        rv.revise_dataset(ds, method="ensemble", model_step=TruthStep(truth), progress=False, log=lambda s: None)
    assert tree_digest(ds / "labelsTr") == before
    with pytest.raises(ValueError, match="a step for each of"):
        rv.revise_dataset(ds, method="ensemble", model_step={"nin": TruthStep(truth)}, progress=False,
                          log=lambda s: None)


@pytest.mark.slow
def test_ensemble_end_to_end_through_nnunet_and_reuse(nnunet_env):
    """Both members trained and predicted with probabilities through nnU-Net; a re-run on a copy reuses both models
    (no training) and writes the same labels."""
    import torch

    torch.set_num_threads(1)
    raw = Path(nnunet_env["nnUNet_raw"])
    ds, truth = make_dataset(raw, dim=2, n_cases=5, n_clean=2, name="Dataset131_Ens")
    assert main(["-d", "131", "--method", "ensemble", "-tr", "NoiseIdentificationTrainer_debug", "--clean_only_tr",
                 "nnUNetTrainer_debug", "-device", "cpu", "--no_pbar", "--no_report"]) == 0
    manifest = json.loads((ds / "labelsTr_revision.json").read_text())
    assert manifest["aux_dataset"] == ["Dataset500_EnsNIN", "Dataset501_EnsNLclean"]
    members = manifest["model"]["members"]
    assert 0.0 <= manifest["model"]["member_agreement_dice"]["c1"] <= 1.0
    assert members["nin"]["trainer"] == "NoiseIdentificationTrainer_debug"
    assert members["clean_only"]["trainer"] == "nnUNetTrainer_debug"
    assert manifest["noise_maps_from"].startswith("network")  # from the noise identification member's branches
    for i in range(5):
        lab = read_array(ds / "labelsTr" / f"toy_{i:03d}.png")
        assert lab.shape == (32, 32) and lab.max() <= 1
    copy = raw / "Dataset132_EnsCopy"
    shutil.copytree(ds, copy, ignore=shutil.ignore_patterns("labelsTr", "labelsTr_revision*", "noise_maps"))
    os.rename(copy / "labelsTr_imperfect", copy / "labelsTr")
    assert main(["-d", "132", "--method", "ensemble", "--model", members["nin"]["model_folder"],
                 "--clean_only_model", members["clean_only"]["model_folder"], "-device", "cpu", "--no_pbar",
                 "--no_report"]) == 0
    m2 = json.loads((copy / "labelsTr_revision.json").read_text())["model"]["members"]
    assert not m2["nin"]["trained_here"] and not m2["clean_only"]["trained_here"]
    assert tree_digest(copy / "labelsTr") == tree_digest(ds / "labelsTr")


@pytest.mark.parametrize("rounds", [0, 1, 3])
def test_revision_realigns_misplaced_labels_and_predicts_them_again(tmp_path, rounds):
    ds, truth = make_dataset(tmp_path / "raw", n_cases=8, n_clean=2)  # imperfect = truth dilated by 2 px
    misplaced = ["toy_002", "toy_003", "toy_004"]
    for c in misplaced:  # drawn 6 px off
        write_png(np.roll(read_array(truth / f"{c}.png"), 6, axis=1), ds / "labelsTr" / f"{c}.png")
    step = FollowingStep(truth)
    realign = rounds > 0
    manifest = rv.revise_dataset(ds, model_step=step, aux_folder=str(tmp_path / "aux"), realign=realign,
                                 realign_rounds=max(rounds, 1), keep_consistent=False, progress=False,
                                 log=lambda s: None, report=realign)
    scores = {c: dice(read_array(ds / "labelsTr" / f"{c}.png"), read_array(truth / f"{c}.png"))
              for c in manifest["cases"] if manifest["cases"][c]["source"] == "revised"}
    for c in ("toy_005", "toy_006", "toy_007"):  # dilated in place: predicted once, never moved
        assert scores[c] == 1.0 and "realigned" not in manifest["cases"][c]
    if not realign:
        assert len(step.calls) == 1 and manifest["realignment"] == {"enabled": False}
        assert all(scores[c] < 0.75 for c in misplaced)  # 3 px off
        return
    assert len(step.calls) == 1 + rounds and all(sorted(a.predict_ids) == misplaced for a in step.calls[1:])
    assert manifest["realignment"]["num_cases"] == 3
    for c in misplaced:
        rec = manifest["cases"][c]
        assert rec["realigned"]["classes"][1]["moved"] and rec["realigned"]["rounds"] == rounds
        assert rec["noise_map_from"] == "difference"
        if rounds == 1:  # the second pass read a label 3 px off instead of 6 and predicts 2 px off
            assert 0.65 < scores[c] < 0.9
        else:  # the label moved onto predictions 2, then 1 px off: the last pass reads it in place
            assert scores[c] == 1.0
    saved = json.loads((ds / "labelsTr_revision.json").read_text())
    assert saved["cases"]["toy_002"]["realigned"]["classes"]["1"]["moved"] is True
    report = json.loads((ds / "labelsTr_revision_report" / "report.json").read_text())["cases"]
    assert {c for c, r in report.items() if r["decision"] == "realigned, predicted again"} == set(misplaced)
    assert report["toy_005"]["decision"] == "predicted" and report["toy_000"]["decision"] == "clean label"


def test_ensemble_realigns_onto_the_average_of_both_models(tmp_path):
    """A network that copies a misplaced label never moves it against its own prediction; the ensemble's average,
    drawn to the truth by the clean-only member, does: the label moves, the network reads it in place, and the
    ensemble's revision is the truth."""
    ds, truth = make_dataset(tmp_path / "raw", n_cases=8, n_clean=2)
    misplaced = ["toy_002", "toy_003", "toy_004"]
    for c in misplaced:
        write_png(np.roll(read_array(truth / f"{c}.png"), 6, axis=1), ds / "labelsTr" / f"{c}.png")
    steps = {"nin": ProbFollowingStep(truth, follow=1.0, confidence=0.6),
             "clean_only": ProbFollowingStep(truth, follow=0.0, confidence=0.95)}
    manifest = rv.revise_dataset(ds, method="ensemble", model_step=steps, aux_folder=str(tmp_path / "aux"),
                                 realign=True, realign_rounds=2, keep_consistent=False, progress=False,
                                 log=lambda s: None, report=False)
    assert manifest["realignment"]["num_cases"] == 3
    assert [sorted(a.predict_ids) for a in steps["nin"].calls[1:]] == [misplaced, misplaced]
    assert len(steps["clean_only"].calls) == 1  # blind to the label: predicted once
    for c in misplaced:
        assert manifest["cases"][c]["realigned"]["rounds"] == 2
        np.testing.assert_array_equal(read_array(ds / "labelsTr" / f"{c}.png"), read_array(truth / f"{c}.png"))
    for member in ("nin", "clean_only"):  # the probabilities kept for the rounds are gone in the end
        assert not list((tmp_path / "aux" / member / "predictionsTs").glob("*.npz"))


def test_realign_needs_the_network(toy2d):
    ds, truth = toy2d
    before = sorted(p.name for p in ds.iterdir())
    with pytest.raises(rv_base.RevisionError, match="clean_only"):
        rv.revise_dataset(ds, method="clean_only", model_step=FollowingStep(truth), realign=True, progress=False,
                          log=lambda s: None)
    with pytest.raises(rv_base.RevisionError, match="realign_rounds"):
        rv.revise_dataset(ds, model_step=FollowingStep(truth), realign=True, realign_rounds=0, progress=False,
                          log=lambda s: None)
    with pytest.raises(rv_base.RevisionError, match="realign_min_gain"):
        rv.revise_dataset(ds, model_step=FollowingStep(truth), realign=True, realign_min_gain=0, progress=False,
                          log=lambda s: None)
    assert sorted(p.name for p in ds.iterdir()) == before  # nothing written


@pytest.mark.slow
def test_realignment_rounds_through_nnunet(nnunet_env, monkeypatch):
    """The realignment's extra passes go through nnU-Net's predictor with the model of the first pass (no second
    training), from inputs written one folder deeper; every case is declared misplaced here (by a patched decision,
    so the test does not hang on what a few training iterations learn)."""
    import torch

    from nnunet_noisylabels.revision import realign

    torch.set_num_threads(1)
    raw = Path(nnunet_env["nnUNet_raw"])
    ds, truth = make_dataset(raw, dim=2, n_cases=5, n_clean=2, name="Dataset141_Realign")
    seen = []

    def always_move(imperfect, reference, classes, spacing=None, min_gain=0.05):
        seen.append(reference.copy())
        return np.roll(imperfect, 1, axis=0), {int(c): {"moved": True} for c in classes}

    monkeypatch.setattr(realign, "realign_label_map", always_move)
    assert main(["-d", "141", "-tr", "NoiseIdentificationTrainer_debug", "-device", "cpu", "--no_pbar", "--no_report",
                 "--realign", "--realign_rounds", "2", "--aux_id", "541"]) == 0
    manifest = json.loads((ds / "labelsTr_revision.json").read_text())
    assert manifest["realignment"] == {"enabled": True, "min_gain": 0.05, "rounds": 2, "num_cases": 3}
    assert manifest["model"]["trained_here"] is True
    assert len(list(Path(nnunet_env["nnUNet_results"]).rglob("checkpoint_final.pth"))) == 1
    aux = raw / "Dataset541_RealignNIN"
    assert len(seen) == 6  # 3 cases, 2 rounds
    for c in ("toy_002", "toy_003", "toy_004"):
        rec = manifest["cases"][c]
        assert rec["realigned"]["rounds"] == 2 and rec["noise_map_from"] == "difference"
        # the label input of the last round is the rolled imperfect label, and its prediction is the revised label
        np.testing.assert_array_equal(read_array(aux / "realigned" / "imagesTs" / f"{c}_0001.png"),
                                      np.roll(read_array(ds / "labelsTr_imperfect" / f"{c}.png"), 1, axis=0))
        np.testing.assert_array_equal(read_array(ds / "labelsTr" / f"{c}.png"),
                                      read_array(aux / "realigned" / "predictionsTs" / f"{c}.png"))
