"""Label revision, inputs: validation before anything is written, preserved originals, re-runs, recovery of an
interrupted swap."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from revision_support import TruthStep, make_dataset, read_array, tree_digest, write_nii, write_png

from nnunet_noisylabels.cli.revise import main
from nnunet_noisylabels.revision import api as rv
from nnunet_noisylabels.revision import base as rv_base
from nnunet_noisylabels.revision import inputs as rv_inputs


def test_validate_lists_cases(toy2d):
    ds, _ = toy2d
    inp = rv_inputs.validate_inputs(ds)
    assert inp.clean_ids == ["toy_000", "toy_001"]
    assert inp.revise_ids == [f"toy_{i:03d}" for i in range(2, 6)]
    assert inp.num_classes == 2 and inp.num_image_channels == 1 and inp.dimensionality == 2
    assert inp.originals_folder == ds / "labelsTr"


@pytest.mark.parametrize("breakage, match", [
    ("no_clean_dir", "labelsTr_clean"),
    ("empty_clean", "clean subset is empty"),
    ("orphan_clean", "no matching case"),
    ("shape_mismatch", "differ in shape"),
    ("bad_value_imperfect", r"label values \[5\]"),
    ("bad_value_clean", r"label values \[3\]"),
    ("missing_image", "image file"),
    ("all_clean", "nothing to revise"),
])
def test_bad_input_clear_error_nothing_written(toy2d, capsys, breakage, match):
    ds, _ = toy2d
    clean = ds / "labelsTr_clean"
    if breakage == "no_clean_dir":
        shutil.rmtree(clean)
    elif breakage == "empty_clean":
        for p in clean.iterdir():
            p.unlink()
    elif breakage == "orphan_clean":
        shutil.copy(clean / "toy_000.png", clean / "stranger.png")
    elif breakage == "shape_mismatch":
        write_png(np.zeros((30, 32)), clean / "toy_001.png")
    elif breakage == "bad_value_imperfect":
        lab = read_array(ds / "labelsTr" / "toy_004.png")
        lab[0, 0] = 5
        write_png(lab, ds / "labelsTr" / "toy_004.png")
    elif breakage == "bad_value_clean":
        lab = read_array(clean / "toy_000.png")
        lab[0, 0] = 3
        write_png(lab, clean / "toy_000.png")
    elif breakage == "missing_image":
        (ds / "imagesTr" / "toy_003_0000.png").unlink()
    elif breakage == "all_clean":
        for p in (ds / "labelsTr").iterdir():
            shutil.copy(p, clean / p.name)
    before = tree_digest(ds.parent)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        rv_inputs.validate_inputs(ds)
    assert main(["-d", str(ds), "--no_pbar"]) == 2
    assert "nnUNetv2_nl_revise: error:" in capsys.readouterr().err
    assert tree_digest(ds.parent) == before  # nothing written anywhere under nnUNet_raw


def test_rerun_starts_from_preserved_originals(toy2d):
    ds, truth = toy2d
    originals = tree_digest(ds / "labelsTr")
    rv.revise_dataset(ds, model_step=TruthStep(truth), progress=False, log=lambda s: None, report=False)
    step = TruthStep(truth)
    rv.revise_dataset(ds, model_step=step, progress=False, log=lambda s: None, report=False)
    assert tree_digest(ds / "labelsTr_imperfect") == originals
    # the second run fed the network the ORIGINAL imperfect label, not the first run's revision
    imperfect = read_array(ds / "labelsTr_imperfect" / "toy_004.png")
    np.testing.assert_array_equal(step.seen_label_channels["toy_004"][0].squeeze(), (imperfect == 1))
    assert not np.array_equal(imperfect, read_array(ds / "labelsTr" / "toy_004.png"))


def test_interrupted_swap_is_recovered(toy2d):
    ds, truth = toy2d
    before = tree_digest(ds / "labelsTr")
    # die between the two renames of a swap: labelsTr moved aside, new one not yet in place
    os.rename(ds / "labelsTr", ds / "labelsTr.old-deadbeef")
    (ds / "labelsTr.tmp-cafebabe").mkdir()
    done = rv_inputs.recover_interrupted_swap(ds)
    assert any("restored labelsTr" in d for d in done)
    assert tree_digest(ds / "labelsTr") == before and not list(ds.glob("labelsTr.*"))


def test_geometry_mismatch_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    ds, _ = make_dataset(tmp_path / "raw", dim=3, n_cases=3, n_clean=1)
    clean = read_array(ds / "labelsTr_clean" / "toy_000.nii.gz")
    write_nii(clean, ds / "labelsTr_clean" / "toy_000.nii.gz", spacing=(2.0, 1.0, 1.0))
    before = tree_digest(ds)
    with pytest.raises(ValueError, match="differ in geometry"):
        rv_inputs.validate_inputs(ds)
    assert main(["-d", str(ds), "--no_pbar"]) == 2 and tree_digest(ds) == before


def test_fold_other_than_all_needs_five_clean_pairs(toy2d):
    ds, truth = toy2d
    with pytest.raises(ValueError, match="use -f all"):
        rv.revise_dataset(ds, model_step=TruthStep(truth), fold="0", progress=False, log=lambda s: None)
    assert not (ds / "labelsTr_imperfect").exists()


def test_links_to_symlinked_images_resolve_from_any_depth(tmp_path):
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "a_0000.png").write_bytes(b"image")
    (tmp_path / "noisy").mkdir()
    os.symlink("../clean/a_0000.png", tmp_path / "noisy" / "a_0000.png")  # as nnUNetv2_nl_corrupt links images
    deep = tmp_path / "aux" / "realigned" / "imagesTs"
    deep.mkdir(parents=True)
    rv_base.link_or_copy(tmp_path / "noisy" / "a_0000.png", deep / "a_0000.png")
    assert (deep / "a_0000.png").read_bytes() == b"image"
