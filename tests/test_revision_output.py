"""Label revision, outputs: noise maps, the revised labels swapped in atomically, the output-dataset mode, the
report, the consistency gate."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from revision_support import NearTruthStep, TruthStep, make_dataset, read_array, rel_close, tree_digest, write_png

from nnunet_noisylabels.cli.revise import main
from nnunet_noisylabels.revision import api as rv
from nnunet_noisylabels.revision import base as rv_base
from nnunet_noisylabels.revision import output as rv_out


def test_noise_map_golden():
    imperfect = np.array([[0, 1, 1, 2], [0, 0, 1, 2]])
    revised = np.array([[1, 0, 1, 1], [0, 0, 1, 0]])
    expected = np.array([[2, 1, 0, 3], [0, 0, 0, 1]])
    np.testing.assert_array_equal(rv_out.noise_map(imperfect, revised), expected)
    stats = rv_out.noise_statistics(rv_out.noise_map(imperfect, revised))
    assert stats["fraction_changed"] == pytest.approx(4 / 8)
    assert stats["fraction_over"] == pytest.approx(2 / 8)
    assert stats["fraction_under"] == pytest.approx(1 / 8)
    assert stats["fraction_swap"] == pytest.approx(1 / 8)


def test_revise_in_place_preserves_originals_and_writes_revision(toy2d):
    ds, truth = toy2d
    originals = tree_digest(ds / "labelsTr")
    step = TruthStep(truth)
    manifest = rv.revise_dataset(ds, model_step=step, progress=False, log=lambda s: None, truth_folder=str(truth))
    assert tree_digest(ds / "labelsTr_imperfect") == originals
    for i in range(6):
        case = f"toy_{i:03d}.png"
        ref = ds / "labelsTr_clean" / case if i < 2 else truth / case
        np.testing.assert_array_equal(read_array(ds / "labelsTr" / case), read_array(ref))
    on_disk = json.loads((ds / "labelsTr_revision.json").read_text())
    assert on_disk == manifest and on_disk["mode"] == "in_place" and on_disk["model"] == {"fake": True}
    assert {c: r["source"] for c, r in on_disk["cases"].items()} == {
        **{f"toy_{i:03d}": "clean" for i in range(2)}, **{f"toy_{i:03d}": "revised" for i in range(2, 6)}}
    # imperfect = dilation of the truth, so the revision only removes voxels: pure over-annotation
    nmap = read_array(ds / "noise_maps" / "toy_003.png")
    expected = rv_out.noise_map(read_array(ds / "labelsTr_imperfect" / "toy_003.png"),
                                read_array(truth / "toy_003.png"))
    np.testing.assert_array_equal(nmap, expected)
    assert set(np.unique(nmap)) == {0, 1}
    assert on_disk["cases"]["toy_003"]["fraction_over"] > 0 and on_disk["cases"]["toy_003"]["fraction_under"] == 0
    assert not list(ds.glob("*.tmp-*")) and not list(ds.glob("*.old-*"))
    # the report says the revision is closer to the truth, and draws the overlays
    rep = json.loads((ds / "labelsTr_revision_report" / "report.json").read_text())
    assert rep["mean"]["dice_revised"] == pytest.approx(1.0)
    assert rep["mean"]["dice_imperfect"] < 0.9
    assert rep["mean"]["hd95_revised"] == 0.0 and rep["mean"]["hd95_imperfect"] >= 1.0
    assert len(rep["overlays"]) >= 2
    assert all((ds / "labelsTr_revision_report" / p).stat().st_size > 1000 for p in rep["overlays"])
    assert (ds / "labelsTr_revision_report" / "report.csv").read_text().count("\n") == 7


@pytest.mark.parametrize("failure", ["model_raises", "interrupt_before_swap", "bad_prediction_shape"])
def test_failed_run_leaves_labels_untouched(toy2d, failure, monkeypatch):
    ds, truth = toy2d
    before = tree_digest(ds / "labelsTr")
    if failure == "model_raises":
        step, exc = TruthStep(truth, fail=RuntimeError("training diverged")), RuntimeError
    elif failure == "bad_prediction_shape":
        step, exc = TruthStep(truth, bad_shape=True), RuntimeError
    else:
        step, exc = TruthStep(truth), KeyboardInterrupt
        real = rv_out.swap_in_folder

        def interrupted(tmp, target):
            raise KeyboardInterrupt

        monkeypatch.setattr(rv_out, "swap_in_folder", interrupted)
    with pytest.raises(exc):
        rv.revise_dataset(ds, model_step=step, progress=False, log=lambda s: None)
    assert tree_digest(ds / "labelsTr") == before
    assert tree_digest(ds / "labelsTr_imperfect") == before
    assert not (ds / "labelsTr_revision.json").exists() and not (ds / "noise_maps").exists()
    assert not list(ds.glob("*.tmp-*"))
    if failure == "interrupt_before_swap":
        monkeypatch.setattr(rv_out, "swap_in_folder", real)
    # a later successful run works from the preserved originals
    rv.revise_dataset(ds, model_step=TruthStep(truth), progress=False, log=lambda s: None, report=False)
    np.testing.assert_array_equal(read_array(ds / "labelsTr" / "toy_005.png"), read_array(truth / "toy_005.png"))


def test_output_dataset_mode_leaves_source_untouched(toy2d, tmp_path):
    ds, truth = toy2d
    before = tree_digest(ds)
    rv.revise_dataset(ds, model_step=TruthStep(truth), output_dataset="Dataset102_ToyRevised", progress=False,
                      log=lambda s: None, report=False)
    assert tree_digest(ds) == before
    out = tmp_path / "raw" / "Dataset102_ToyRevised"
    assert json.loads((out / "dataset.json").read_text())["name"] == "Dataset102_ToyRevised"
    assert tree_digest(out / "labelsTr_imperfect") == tree_digest(ds / "labelsTr")
    assert tree_digest(out / "labelsTr_clean") == tree_digest(ds / "labelsTr_clean")
    assert tree_digest(out / "imagesTr") == tree_digest(ds / "imagesTr")
    np.testing.assert_array_equal(read_array(out / "labelsTr" / "toy_002.png"), read_array(truth / "toy_002.png"))
    assert json.loads((out / "labelsTr_revision.json").read_text())["mode"] == "new_dataset"
    with pytest.raises(ValueError, match="already exists"):
        rv.revise_dataset(ds, model_step=TruthStep(truth), output_dataset="Dataset102_ToyRevised",
                          progress=False, log=lambda s: None)


def test_report_without_truth_ranks_by_change(toy2d):
    from nnunet_noisylabels.revision.report import write_revision_report

    ds, truth = toy2d
    rv.revise_dataset(ds, model_step=TruthStep(truth), progress=False, log=lambda s: None, report=False)
    rep = write_revision_report(ds, num_overlays=1)
    assert rep["mean"]["dice_revised"] is None and rep["ranked_by"].startswith("fraction changed")
    assert rep["mean"]["num_cases"] == 4
    assert rep["cases"]["toy_000"]["source"] == "clean"
    assert len(rep["overlays"]) == 2 and "|" in (ds / "labelsTr_revision_report" / "report.md").read_text()
    # later, with the truth at hand, from the command line
    labels_before = tree_digest(ds / "labelsTr")
    assert main(["-d", str(ds), "--report_only", "--truth", str(truth), "--no_pbar"]) == 0
    rep = json.loads((ds / "labelsTr_revision_report" / "report.json").read_text())
    assert rep["mean"]["dice_revised"] == pytest.approx(1.0) and tree_digest(ds / "labelsTr") == labels_before


def test_branch_noise_maps_are_saved_for_revised_cases(toy2d):
    ds, truth = toy2d

    class BranchStep(TruthStep):
        def __call__(self, aux, out):
            info = super().__call__(aux, out)
            folder = aux.folder / "noise_branches" / "combined"
            folder.mkdir(parents=True)
            for c in aux.predict_ids:
                code = np.zeros((32, 32), np.uint8)
                code[:4] = rv_base.NOISE_OVER
                code[4:6] = rv_base.NOISE_SWAP
                write_png(code, folder / f"{c}.png")
            return {**info, "branch_noise_maps": str(folder)}

    manifest = rv.revise_dataset(ds, model_step=BranchStep(truth), progress=False, log=lambda s: None,
                                 truth_folder=str(truth))
    assert manifest["noise_maps_from"].startswith("network over/under branches")
    nm = read_array(ds / "noise_maps" / "toy_004.png")
    assert (nm[:4] == 1).all() and (nm[4:6] == 3).all() and (nm[6:] == 0).all()
    case = manifest["cases"]["toy_004"]
    assert case["noise_map_from"] == "branches"
    assert case["branch_fraction_over"] == pytest.approx(6 / 32) and case["branch_fraction_under"] == pytest.approx(
        2 / 32)
    # clean cases keep the true noise (imperfect vs clean)
    assert manifest["cases"]["toy_000"]["noise_map_from"] == "difference"
    np.testing.assert_array_equal(read_array(ds / "noise_maps" / "toy_000.png"), rv_out.noise_map(
        read_array(ds / "labelsTr_imperfect" / "toy_000.png"), read_array(ds / "labelsTr_clean" / "toy_000.png")))
    rep = json.loads((ds / "labelsTr_revision_report" / "report.json").read_text())
    assert rep["cases"]["toy_004"]["flagged_over"] == pytest.approx(6 / 32)
    assert rep["cases"]["toy_004"]["fraction_over"] != rep["cases"]["toy_004"]["flagged_over"]


def test_revise_3d_multiclass_in_place(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    ds, truth = make_dataset(tmp_path / "raw", dim=3, n_cases=4, n_clean=1, num_classes=3)
    originals = tree_digest(ds / "labelsTr")
    manifest = rv.revise_dataset(ds, model_step=TruthStep(truth), progress=False, log=lambda s: None,
                                 truth_folder=str(truth))
    assert tree_digest(ds / "labelsTr_imperfect") == originals
    for i in range(1, 4):
        np.testing.assert_array_equal(read_array(ds / "labelsTr" / f"toy_{i:03d}.nii.gz"),
                                      read_array(truth / f"toy_{i:03d}.nii.gz"))
    # the revised files keep the geometry of the originals
    import SimpleITK as sitk

    a, b = (sitk.ReadImage(str(ds / d / "toy_002.nii.gz")) for d in ("labelsTr", "labelsTr_imperfect"))
    assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
    assert manifest["cases"]["toy_002"]["fraction_over"] > 0
    rep = json.loads((ds / "labelsTr_revision_report" / "report.json").read_text())
    assert set(rep["cases"]["toy_002"]["dice_revised_per_class"]) == {"1", "2"}
    assert rep["mean"]["dice_revised"] == pytest.approx(1.0) and rep["mean"]["dice_imperfect"] < 0.9
    assert rep["overlays"]


def test_relative_change_golden():
    from nnunet_noisylabels.revision.consistency import relative_change

    imp = np.array([[0, 1, 1, 0], [0, 1, 2, 0]])
    rev = np.array([[0, 1, 0, 0], [1, 1, 1, 0]])
    # union of foreground: 5 voxels; changed: (0,2) 1->0, (1,0) 0->1, (1,2) 2->1
    assert rel_close(relative_change(imp, rev), 3 / 5)
    assert relative_change(imp, imp) == 0.0
    assert relative_change(np.zeros((3, 3)), np.zeros((3, 3))) == 0.0
    with pytest.raises(ValueError, match="shape mismatch"):
        relative_change(imp, rev[:, :3])


def test_consistent_cases_keeps_only_a_group_that_stands_apart():
    from nnunet_noisylabels.revision.consistency import consistent_cases

    rng = np.random.default_rng(0)
    # 30% untouched labels (the model changes ~3% of them), 70% corrupted (~35% changed)
    scores = {f"a{i}": float(rng.uniform(0.01, 0.05)) for i in range(12)}
    scores.update({f"b{i}": float(rng.uniform(0.25, 0.45)) for i in range(28)})
    kept, info = consistent_cases(scores)
    assert kept == {f"a{i}" for i in range(12)}
    assert info["applied"] and info["num_kept"] == 12 and info["ratio"] > 3
    assert len(info["splits"]) == 2 and "no second group" in info["splits"][1]["reason"]  # the untouched don't split
    # every label corrupted alike: one broad group, nothing kept
    alike = {f"c{i}": float(v) for i, v in enumerate(rng.normal(0.3, 0.05, 40).clip(0.05))}
    kept, info = consistent_cases(alike)
    assert kept == set() and not info["applied"] and "not apart" in info["reason"]
    # three kinds of labels (as measured on the 3-class alpha/beta map with a network trained on moved labels):
    # untouched ~0.03, dilated ~0.23, moved or eroded 0.3-0.56; one split would keep the dilated ones too
    three = {f"u{i}": float(v) for i, v in enumerate(rng.uniform(0.006, 0.077, 40))}
    three.update({f"d{i}": float(v) for i, v in enumerate(rng.uniform(0.206, 0.254, 34))})
    three.update({f"m{i}": float(v) for i, v in enumerate(rng.uniform(0.293, 0.564, 58))})
    kept, info = consistent_cases(three)
    assert kept == {f"u{i}" for i in range(40)} and info["num_kept"] == 40
    first = info["splits"][0]
    assert first["ratio"] >= 3 and first["threshold"] > 0.206  # the first split keeps untouched + dilated
    assert len(info["splits"]) == 3 and info["ratio"] == info["splits"][1]["ratio"]
    # the same three kinds, but the first split falls above the dilated ones and is not apart (measured with a
    # network trained on dilated/eroded label inputs: untouched 0.03-0.12, dilated 0.22-0.28, moved 0.30-0.40,
    # eroded 0.48-0.52; ratio 2.96): its low side holds the untouched labels as a group of their own
    r = np.random.default_rng(0)  # a draw whose first split lies above the dilated ones (others split below them)
    middle = {f"u{i}": float(v) for i, v in enumerate(r.uniform(0.03, 0.08, 40))}
    middle.update({f"d{i}": float(v) for i, v in enumerate(r.uniform(0.22, 0.28, 34))})
    middle.update({f"m{i}": float(v) for i, v in enumerate(r.uniform(0.30, 0.40, 30))})
    middle.update({f"e{i}": float(v) for i, v in enumerate(r.uniform(0.48, 0.52, 28))})
    kept, info = consistent_cases(middle)
    assert kept == {f"u{i}" for i in range(40)} and info["applied"]
    first, second = info["splits"][:2]
    assert first["ratio"] < 3 and "not apart" in first["reason"] and first["threshold"] > 0.27
    assert second["num_cases"] == 74 and second["separability"] >= 0.9 and info["ratio"] == second["ratio"]
    # untouched labels whose scores are skewed towards 0 split at a ratio above 3 by chance, but not into two groups:
    # all of them are kept
    skewed = {f"u{i}": float(v) for i, v in enumerate(rng.exponential(0.03, 40).clip(0.002, 0.12))}
    skewed.update({f"m{i}": float(v) for i, v in enumerate(rng.uniform(0.3, 0.5, 40))})
    kept, info = consistent_cases(skewed)
    assert kept == {f"u{i}" for i in range(40)}
    assert info["splits"][1]["ratio"] >= 3 and info["splits"][1]["separability"] < 0.9
    # too few cases to split, or all alike
    assert consistent_cases({k: scores[k] for k in list(scores)[:5]})[0] == set()
    assert consistent_cases({f"d{i}": 0.2 for i in range(10)})[1]["reason"] == "all cases changed alike"
    with pytest.raises(ValueError, match="min_ratio"):
        consistent_cases(scores, min_ratio=1.0)


@pytest.mark.parametrize("keep", [True, False])
def test_revision_keeps_untouched_labels_the_model_agrees_with(tmp_path, keep):
    ds, truth = make_dataset(tmp_path / "raw", n_cases=16, n_clean=2)
    untouched = [f"toy_{i:03d}" for i in range(2, 8)]  # their imperfect label is already correct
    for c in untouched:
        shutil.copy(truth / f"{c}.png", ds / "labelsTr" / f"{c}.png")
    manifest = rv.revise_dataset(ds, model_step=NearTruthStep(truth), aux_folder=str(tmp_path / "aux"),
                                 keep_consistent=keep, progress=False, log=lambda s: None)
    gate = manifest["consistency_gate"]
    assert gate["applied"] is keep
    for i in range(2, 16):
        c = f"toy_{i:03d}"
        lab = read_array(ds / "labelsTr" / f"{c}.png")
        predicted = read_array(tmp_path / "aux" / "predictionsTs" / f"{c}.png")
        if keep and c in untouched:
            np.testing.assert_array_equal(lab, read_array(truth / f"{c}.png"))  # the correct label survives
            assert manifest["cases"][c]["kept_imperfect"] and manifest["cases"][c]["consistency_score"] < 0.05
        else:
            np.testing.assert_array_equal(lab, predicted)
            assert "kept_imperfect" not in manifest["cases"][c]
    if keep:
        assert gate["num_kept"] == len(untouched)
