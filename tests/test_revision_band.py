"""Label revision, the uncertain band (``--uncertain_band``): voxels the revision is unsure about carry nnU-Net's
ignore label in a new dataset, the hard revision stays in ``labelsTr_hard/``, clean pairs never carry it."""
from __future__ import annotations

import json

import numpy as np
import pytest
from revision_support import ProbStep, TruthStep, make_dataset, read_array, top_half, tree_digest

from nnunet_noisylabels.cli.revise import main
from nnunet_noisylabels.revision import api as rv
from nnunet_noisylabels.revision.band import mark_band, probability_margin, uncertain_band
from nnunet_noisylabels.revision.base import DATASET_JSON_KEY, RevisionError


def test_margin_and_band_golden():
    probs = np.array([[0.9, 0.55, 0.2, 0.34],   # class 0
                      [0.1, 0.45, 0.8, 0.33],   # class 1
                      [0.0, 0.00, 0.0, 0.33]])  # class 2
    np.testing.assert_allclose(probability_margin(probs), [0.8, 0.1, 0.6, 0.01], atol=1e-6)
    np.testing.assert_array_equal(uncertain_band(probs, 0.5), [False, True, False, True])
    np.testing.assert_array_equal(uncertain_band(probs, 0.0), [False] * 4)
    # an ensemble's members that disagree are uncertain whatever the margin
    a, b = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    np.testing.assert_array_equal(uncertain_band(probs, 0.05, [a, b]), [False, True, False, True])
    np.testing.assert_array_equal(uncertain_band(None, 0.5, [a, b]), [False, True, False, False])
    np.testing.assert_array_equal(mark_band(np.array([0, 1, 1, 0]), np.array([True, False, True, False]), 2),
                                  [2, 1, 2, 0])
    with pytest.raises(ValueError, match="margin"):
        uncertain_band(probs, 1.5)
    with pytest.raises(ValueError, match="shape"):
        mark_band(np.zeros(3), np.zeros(4, bool), 2)


def _wrong_left(truth):
    """The voxels ProbStep gets wrong: the left quarter (a narrow margin, 0.6 vs 0.4, there)."""
    w = np.zeros(truth.shape, bool)
    w[..., : truth.shape[-1] // 4] = True
    return w


@pytest.mark.parametrize("dim", [2, 3])
def test_band_marks_the_uncertain_voxels_of_revised_cases_only(tmp_path, monkeypatch, dim):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    (tmp_path / "raw").mkdir()
    ds, truth = make_dataset(tmp_path / "raw", dim=dim, num_classes=3)
    fe = ".png" if dim == 2 else ".nii.gz"
    source = tree_digest(ds)
    step = ProbStep(truth, _wrong_left, num_classes=3)
    manifest = rv.revise_dataset(ds, model_step=step, progress=False, log=lambda s: None, keep_consistent=False,
                                 output_dataset="Dataset102_Band", uncertain_band=0.3, truth_folder=str(truth))
    out = tmp_path / "raw" / "Dataset102_Band"
    assert tree_digest(ds) == source  # the source dataset is never touched
    djson = json.loads((out / "dataset.json").read_text())
    assert djson["labels"] == {"background": 0, "c1": 1, "c2": 2, "ignore": 3}
    assert djson[DATASET_JSON_KEY] == {"clean_cases": ["toy_000", "toy_001"],
                                       "uncertain_band": {"margin": 0.3, "ignore_label": 3}}
    assert manifest["uncertain_band"]["enabled"] and manifest["uncertain_band"]["ignore_label"] == 3
    for i in range(6):
        case = f"toy_{i:03d}"
        labels = read_array(out / "labelsTr" / f"{case}{fe}")
        if i < 2:  # clean pairs: their clean label, no band, and no hard copy needed beyond it
            np.testing.assert_array_equal(labels, read_array(ds / "labelsTr_clean" / f"{case}{fe}"))
            assert "band_fraction" not in manifest["cases"][case]
            continue
        t = read_array(truth / f"{case}{fe}")
        hard = read_array(out / "labelsTr_hard" / f"{case}{fe}")
        wrong = _wrong_left(t)
        # the hard revision is the argmax (wrong on the left quarter); the band is exactly there
        np.testing.assert_array_equal(hard[~wrong], t[~wrong])
        np.testing.assert_array_equal(labels == 3, wrong)
        np.testing.assert_array_equal(labels[~wrong], hard[~wrong])
        assert manifest["cases"][case]["band_fraction"] == pytest.approx(wrong.mean())
        assert manifest["cases"][case]["band_voxels"] == int(wrong.sum())
    # the report scores the hard revision and shows the band
    rep = json.loads((out / "labelsTr_revision_report" / "report.json").read_text())
    assert rep["mean"]["band_fraction"] == pytest.approx(0.25, abs=0.02)
    assert 0.5 < rep["mean"]["dice_revised"] < 1.0
    assert "band_fraction" in (out / "labelsTr_revision_report" / "report.md").read_text()


def test_ensemble_band_adds_the_members_disagreement(toy2d):
    """Members that disagree on the top half: the band is the top half even with margin 0 (disagreement only)."""
    ds, truth = toy2d
    steps = {"nin": ProbStep(truth, top_half), "clean_only": ProbStep(truth, lambda t: np.zeros(t.shape, bool))}
    manifest = rv.revise_dataset(ds, method="ensemble", model_step=steps, progress=False, log=lambda s: None,
                                 report=False, keep_consistent=False, output_dataset="Dataset103_EnsBand",
                                 uncertain_band=0.0)
    out = ds.parent / "Dataset103_EnsBand"
    assert "two models predict different classes" in manifest["uncertain_band"]["marks"]
    for i in range(2, 6):
        t = read_array(truth / f"toy_{i:03d}.png")
        labels = read_array(out / "labelsTr" / f"toy_{i:03d}.png")
        np.testing.assert_array_equal(labels == 2, top_half(t))
        # the mean of the two is right everywhere: the hard revision is the truth
        np.testing.assert_array_equal(read_array(out / "labelsTr_hard" / f"toy_{i:03d}.png"), t)


def test_band_needs_a_new_dataset_and_probabilities(toy2d, capsys):
    ds, truth = toy2d
    before = tree_digest(ds)
    with pytest.raises(RevisionError, match="-o"):
        rv.revise_dataset(ds, model_step=ProbStep(truth, top_half), progress=False, uncertain_band=0.5)
    with pytest.raises(RevisionError, match=r"\[0, 1\]"):
        rv.revise_dataset(ds, model_step=ProbStep(truth, top_half), progress=False, uncertain_band=2.0,
                          output_dataset="Dataset104_X")
    # a model that writes no probabilities: refused, nothing written
    with pytest.raises(RuntimeError, match="probabilities"):
        rv.revise_dataset(ds, model_step=TruthStep(truth), progress=False, log=lambda s: None,
                          output_dataset="Dataset105_NoProbs", uncertain_band=0.5)
    assert not (ds.parent / "Dataset105_NoProbs").exists()
    assert not list(ds.parent.glob(".Dataset105_NoProbs*"))
    assert tree_digest(ds) == before
    assert main(["-d", str(ds), "--uncertain_band"]) == 2
    assert "-o" in capsys.readouterr().err


def test_band_analysis_counts_the_errors_the_band_holds(toy2d, capsys):
    """ProbStep is wrong exactly where its margin is narrow: every error of the hard revision lies in the band."""
    from conftest import load_benchmark

    ds, truth = toy2d
    rv.revise_dataset(ds, model_step=ProbStep(truth, _wrong_left), progress=False, log=lambda s: None, report=False,
                      keep_consistent=False, output_dataset="Dataset106_Analysed", uncertain_band=0.3)
    analysis = load_benchmark("band_analysis")
    row = analysis.analyse(ds.parent / "Dataset106_Analysed", truth)
    assert row["band_share"] == pytest.approx(0.25)
    assert row["error_outside_band"] == 0.0 and row["errors_held_by_band"] == 1.0
    # in the band the hard revision is wrong where the truth is background (ProbStep moves it to class 1)
    assert 0.9 < row["error_in_band"] <= 1.0
    assert analysis.main([str(ds.parent / "Dataset106_Analysed"), str(truth)]) == 0
    assert "| Dataset106_Analysed | 0.2500 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no uncertain band"):
        rv.revise_dataset(ds, model_step=ProbStep(truth, _wrong_left), progress=False, log=lambda s: None,
                          report=False, output_dataset="Dataset107_NoBand")
        analysis.analyse(ds.parent / "Dataset107_NoBand", truth)
