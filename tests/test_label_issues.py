"""Confident-learning label-issue finder: golden values on tiny arrays and planted errors in 2D and 3D."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from scipy import ndimage

from nnunet_noisylabels.baselines.label_issues import (
    ClassThresholds,
    case_quality,
    class_thresholds,
    confident_class,
    find_label_issues,
    rank_cases,
)


def _golden_case():
    p1 = np.array([0.9, 0.8, 0.25, 0.1, 0.6, 0.2], dtype=np.float32)
    probs = np.stack([1 - p1, p1])[:, None]  # (2, 1, 6)
    labels = np.array([[1, 1, 1, 0, 0, 0]])
    return probs, labels


def test_thresholds_golden():
    probs, labels = _golden_case()
    # t0 = mean(0.9, 0.4, 0.8), t1 = mean(0.9, 0.8, 0.25)
    assert_allclose(class_thresholds(probs, labels), [0.7, 0.65], atol=1e-6)


def test_issues_golden_confident_learning_vs_argmax():
    probs, labels = _golden_case()
    cl = find_label_issues(probs, labels)
    # voxel 2 (label 1, p0 = 0.75 >= 0.7) is an issue; voxel 4 (label 0, p1 = 0.6 < 0.65) is not confident
    assert cl[0].tolist() == [False, False, True, False, False, False]
    argmax = find_label_issues(probs, labels, method="predicted_neq_given")
    assert argmax[0].tolist() == [False, False, True, False, True, False]


def test_case_quality_golden():
    probs, labels = _golden_case()
    q = case_quality(probs, labels, find_label_issues(probs, labels))
    assert q["num_issues"] == 1
    assert_allclose(q["issue_fraction"], 1 / 6)
    assert_allclose(q["issue_fraction_roi"], 1 / 4)  # label fg {0,1,2} union predicted fg {0,1,4}
    assert_allclose(q["label_quality"], 0.75)
    assert_allclose(q["mean_self_confidence"], 4.05 / 6, atol=1e-6)
    assert_allclose(q["dice_given_vs_predicted"], 4 / 6)


def test_absent_class_never_confident_and_torch_input():
    probs = torch.tensor([[[0.2, 0.1]], [[0.1, 0.1]], [[0.7, 0.8]]])  # (3, 1, 2); nobody is labelled 2
    labels = torch.tensor([[0, 1]])
    t = class_thresholds(probs, labels)
    assert np.isinf(t[2])
    assert_allclose(t[:2], [0.2, 0.1], atol=1e-6)
    assert confident_class(probs, t).tolist() == [[0, 1]]
    assert not find_label_issues(probs, labels, t).any()


def test_streaming_thresholds_equal_pooled():
    rng = np.random.default_rng(0)
    cases = [(rng.dirichlet(np.ones(3), size=(5, 4)).transpose(2, 0, 1), rng.integers(0, 3, (5, 4)))
             for _ in range(3)]
    acc = ClassThresholds(3)
    for p, l in cases:
        acc.update(p, l)
    pooled_p = np.concatenate([p for p, _ in cases], axis=1)
    pooled_l = np.concatenate([l for _, l in cases], axis=0)
    assert_allclose(acc.thresholds(), class_thresholds(pooled_p, pooled_l), atol=1e-6)
    assert_allclose(class_thresholds([p for p, _ in cases], [l for _, l in cases]), acc.thresholds(), atol=1e-6)


def test_ignore_label_is_never_an_issue_nor_counted():
    probs, labels = _golden_case()
    labels = labels.copy()
    labels[0, 2] = 7  # the one issue voxel becomes "ignore"
    t = class_thresholds(probs, labels, ignore_label=7)
    assert_allclose(t, [0.7, 0.85], atol=1e-6)
    assert not find_label_issues(probs, labels, t, ignore_label=7)[0, 2]


def test_bad_inputs_raise_clear_errors():
    probs, labels = _golden_case()
    with pytest.raises(ValueError, match="do not match"):
        find_label_issues(probs, labels[:, :3])
    with pytest.raises(ValueError, match="outside"):
        find_label_issues(probs, labels + 3)
    with pytest.raises(ValueError, match="Unknown method"):
        find_label_issues(probs, labels, method="magic")


def _disc(shape, center, radius):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center)))
    return dist, dist <= radius


def _planted_dataset(shape, rng):
    """Ten cases: probabilities of a good model around the clean object; cases 1, 4, 7 get corrupted labels."""
    probs, labels, corrupted = {}, {}, {"case_001", "case_004", "case_007"}
    struct = ndimage.generate_binary_structure(len(shape), 1)
    for i in range(10):
        name = f"case_{i:03d}"
        center = [s / 2 + rng.uniform(-3, 3) for s in shape]
        radius = min(shape) / 4 + rng.uniform(-2, 2)
        dist, clean = _disc(shape, center, radius)
        p1 = 1 / (1 + np.exp((dist - radius) / 1.0))
        p1 = np.clip(p1 + rng.normal(0, 0.03, shape), 0.001, 0.999)
        probs[name] = np.stack([1 - p1, p1]).astype(np.float32)
        label = clean.copy()
        if name == "case_001":
            label = ndimage.binary_dilation(clean, struct, iterations=4)
        elif name == "case_004":
            label = ndimage.binary_erosion(clean, struct, iterations=4)
        elif name == "case_007":
            label = np.roll(clean, 5, axis=0)
        labels[name] = label.astype(np.uint8)
    return probs, labels, corrupted


@pytest.mark.parametrize("shape", [(48, 48), (24, 24, 24)])
def test_planted_errors_rank_first_2d_and_3d(shape):
    probs, labels, corrupted = _planted_dataset(shape, np.random.default_rng(1))
    acc = ClassThresholds(2)
    for c in probs:
        acc.update(probs[c], labels[c])
    t = acc.thresholds()
    scores, issues = {}, {}
    for c in probs:
        issues[c] = find_label_issues(probs[c], labels[c], t)
        scores[c] = case_quality(probs[c], labels[c], issues[c])
    ranking = rank_cases(scores)
    assert set(ranking[:3]) == corrupted
    # the flagged voxels of the dilated case are (mostly) the added ring
    added = labels["case_001"].astype(bool) & (probs["case_001"][1] < 0.5)
    flagged = issues["case_001"]
    assert (flagged & added).sum() / flagged.sum() > 0.9
    # confident learning leaves the uncertain band next to the true contour alone, but must catch the rest
    far = added & (probs["case_001"][1] < 0.05)
    assert (flagged & far).sum() / far.sum() > 0.9
    # clean cases: few flags, all of them in the uncertain band at the contour
    for c in set(probs) - corrupted:
        assert scores[c]["issue_fraction_roi"] < 0.1


def _fake_results_folder(root, shape, rng):
    """An nnU-Net results folder with 5-fold validation npz files and the labelsTr they were trained on."""
    import json
    import os

    import SimpleITK as sitk
    from skimage import io

    probs, labels, corrupted = _planted_dataset(shape, rng)
    two_d = len(shape) == 2
    ending = ".png" if two_d else ".nii.gz"
    dataset_json = {"channel_names": {"0": "x"}, "labels": {"background": 0, "fg": 1}, "numTraining": 10,
                    "file_ending": ending}
    results = root / "nnUNet_results" / "Dataset001_Toy" / "nnUNetTrainer__nnUNetPlans__2d"
    labels_dir = root / "labelsTr"
    labels_dir.mkdir(parents=True)
    results.mkdir(parents=True)
    (results / "dataset.json").write_text(json.dumps(dataset_json))
    (results / "plans.json").write_text(json.dumps({"dataset_name": "Dataset001_Toy"}))
    for i, case in enumerate(sorted(probs)):
        val = results / f"fold_{i % 5}" / "validation"
        os.makedirs(val, exist_ok=True)
        # nnU-Net's probabilities are (C, *image array shape): PNG arrays read as (1, X, Y)
        p = probs[case][:, None] if two_d else probs[case]
        np.savez_compressed(val / f"{case}.npz", probabilities=p)
        if two_d:
            io.imsave(labels_dir / f"{case}.png", labels[case], check_contrast=False)
        else:
            sitk.WriteImage(sitk.GetImageFromArray(labels[case]), str(labels_dir / f"{case}.nii.gz"))
    return results, labels_dir, labels, corrupted, ending


@pytest.mark.parametrize("shape", [(48, 48), (24, 24, 24)])
def test_cli_ranks_planted_errors_and_writes_issue_maps(tmp_path, shape, capsys):
    import json

    import SimpleITK as sitk
    from skimage import io

    from nnunet_noisylabels.cli.find_issues import main

    results, labels_dir, labels, corrupted, ending = _fake_results_folder(tmp_path, shape, np.random.default_rng(2))
    before = {p.name: p.read_bytes() for p in labels_dir.iterdir()}
    out = tmp_path / "issues"
    assert main(["-i", str(results), "-l", str(labels_dir), "-o", str(out), "--no_pbar"]) == 0
    table = json.loads((out / "label_issues.json").read_text())
    ranked = [r["case"] for r in table["cases"]]
    assert len(ranked) == 10 and set(ranked[:3]) == corrupted
    assert [r["rank"] for r in table["cases"]] == list(range(1, 11))
    csv_lines = (out / "label_issues.csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,case,label_quality")
    assert [line.split(",")[1] for line in csv_lines[1:]] == ranked
    # issue maps: label files in the label's geometry, flags only where the row says
    for row in table["cases"]:
        path = out / "issue_maps" / f"{row['case']}{ending}"
        arr = io.imread(path) if ending == ".png" else sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        assert arr.shape == labels[row["case"]].shape
        assert set(np.unique(arr)) <= {0, 1}
        assert int(arr.sum()) == row["num_issues"]
    assert table["cases"][0]["num_issues"] > 0
    # labels untouched
    assert {p.name: p.read_bytes() for p in labels_dir.iterdir()} == before
    assert ranked[0] in capsys.readouterr().out


def test_cli_errors_are_clear_and_nonzero(tmp_path, capsys):
    from nnunet_noisylabels.cli.find_issues import main

    results, labels_dir, *_ = _fake_results_folder(tmp_path, (16, 16), np.random.default_rng(3))
    assert main(["-i", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--no_pbar"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["-i", str(results), "-l", str(labels_dir), "-o", str(tmp_path / "o"), "-f", "all"]) == 2
    assert "out-of-fold" in capsys.readouterr().err
    (labels_dir / "case_003.png").unlink()
    assert main(["-i", str(results), "-l", str(labels_dir), "-o", str(tmp_path / "o"), "--no_pbar"]) == 2
    assert "No label file" in capsys.readouterr().err


def test_cli_finds_results_folder_from_dataset_id(tmp_path, monkeypatch):
    import json

    from nnunet_noisylabels.cli.find_issues import main

    results, labels_dir, _, corrupted, _ = _fake_results_folder(tmp_path, (32, 32), np.random.default_rng(4))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "nnUNet_results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    assert main(["-d", "1", "-c", "2d", "-l", str(labels_dir), "--no_pbar"]) == 0
    # default output: where nnUNetTrainerCLSLR looks
    table = json.loads((tmp_path / "pre" / "Dataset001_Toy" / "label_issues" / "label_issues.json").read_text())
    assert set(r["case"] for r in table["cases"][:3]) == corrupted
    assert (tmp_path / "pre" / "Dataset001_Toy" / "label_issues" / "issue_maps" / "case_001.png").is_file()
    assert main(["-d", "2", "-c", "2d", "--no_pbar"]) == 2


# --- coverage: every training case must have out-of-fold probabilities (hostile-user fault sweep) -----------------

def _write_splits(pre_root, cases):
    """nnU-Net's splits_final.json for the fold assignment of _fake_results_folder (sorted case i -> fold i % 5)."""
    import json

    folder = pre_root / "Dataset001_Toy"
    folder.mkdir(parents=True)
    val = [[c for i, c in enumerate(sorted(cases)) if i % 5 == f] for f in range(5)]
    splits = [{"train": sorted(set(cases) - set(v)), "val": v} for v in val]
    (folder / "splits_final.json").write_text(json.dumps(splits))


@pytest.mark.parametrize("with_splits", [False, True])
def test_cli_refuses_partial_cross_validation(tmp_path, monkeypatch, capsys, with_splits):
    """1 of 5 folds trained: scoring 2 of 10 cases silently was the bug; now exit 2, nothing written."""
    import shutil

    from conftest import tree_state

    from nnunet_noisylabels.cli.find_issues import main

    results, labels_dir, labels, *_ = _fake_results_folder(tmp_path, (16, 16), np.random.default_rng(5))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    if with_splits:
        _write_splits(tmp_path / "pre", list(labels))
    for fold in (1, 2, 3, 4):
        shutil.rmtree(results / f"fold_{fold}")
    before = tree_state(tmp_path)
    out = tmp_path / "issues"
    assert main(["-i", str(results), "-l", str(labels_dir), "-o", str(out), "--no_pbar"]) == 2
    err = capsys.readouterr().err
    assert "cover 2 of 10 training cases" in err and "case_001" in err
    assert "fold(s) 1, 2, 3, 4" in err
    assert "nnUNetv2_train Dataset001_Toy 2d FOLD -tr nnUNetTrainer -p nnUNetPlans --npz` (FOLD = 1, 2, 3, 4)" in err
    assert "-f 0" in err
    assert tree_state(tmp_path) == before  # no output folder, no issue maps

    # explicitly restricted to the trained fold: that is what the user asked for, and the count is reported
    assert main(["-i", str(results), "-l", str(labels_dir), "-o", str(out), "-f", "0", "--no_pbar"]) == 0
    assert "Scored 2 of 10 training cases" in capsys.readouterr().out
    import json

    table = json.loads((out / "label_issues.json").read_text())
    assert sorted(r["case"] for r in table["cases"]) == ["case_000", "case_005"]
    assert len(table["unscored_cases"]) == 8


def test_cli_refuses_a_fold_with_partial_validation(tmp_path, monkeypatch, capsys):
    """All five folds present, but one validation folder lacks a case (e.g. an interrupted validation)."""
    from nnunet_noisylabels.cli.find_issues import main

    results, labels_dir, labels, *_ = _fake_results_folder(tmp_path, (16, 16), np.random.default_rng(6))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    _write_splits(tmp_path / "pre", list(labels))
    (results / "fold_2" / "validation" / "case_007.npz").unlink()
    (results / "fold_2" / "checkpoint_final.pth").write_bytes(b"")  # the fold finished; its validation did not
    args = ["-i", str(results), "-l", str(labels_dir), "-o", str(tmp_path / "o"), "--no_pbar"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cover 9 of 10" in err and "case_007" in err and "fold(s) 2" in err
    assert "nnUNetv2_train Dataset001_Toy 2d FOLD -tr nnUNetTrainer -p nnUNetPlans --val --npz` (FOLD = 2)" in err
    # -f 2 asks for fold 2's cases, and fold 2 still lacks one of them according to splits_final.json
    assert main(args + ["-f", "2"]) == 2
    assert "cover 1 of 2" in capsys.readouterr().err
    assert main(args + ["-f", "0", "1"]) == 0


def test_cli_outputs_follow_the_umask(tmp_path, monkeypatch):
    import os
    import stat

    from nnunet_noisylabels.cli.find_issues import main

    results, labels_dir, *_ = _fake_results_folder(tmp_path, (16, 16), np.random.default_rng(7))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    out = tmp_path / "issues"
    old = os.umask(0o022)
    try:
        assert main(["-i", str(results), "-l", str(labels_dir), "-o", str(out), "--no_pbar"]) == 0
    finally:
        os.umask(old)
    for folder in (out, out / "issue_maps"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 12
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {str(p): "0o644" for p in files}
