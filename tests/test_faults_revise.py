"""Fault suite of ``nnUNetv2_nl_revise``: bad inputs are refused before anything is written, and nothing that is not
ours is ever lost.

Each bad input of the table must exit with 2, say what is wrong, and leave the whole nnU-Net folder tree (raw,
preprocessed, results, and anything beside them) exactly as it was: every file's hash, every folder and link, every
mode. The model step is faked where a run has to get past the checks (no nnU-Net training here).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bad_inputs as bad
import numpy as np
import pytest
from conftest import REPO_ROOT, tree_state

from nnunet_noisylabels.cli.revise import main
from nnunet_noisylabels.revision import api as rv
from nnunet_noisylabels.revision import auxiliary as rv_aux
from nnunet_noisylabels.revision import inputs as rv_inputs


# ------------------------------------------------------------------------------------------------ bad inputs
def _foreign_folder(ds: Path, name: str) -> None:
    (ds / name).mkdir()
    (ds / name / "mine.txt").write_text("not written by nnUNetv2_nl_revise\n")


def _other_source_aux(ds: Path) -> None:
    aux = ds.parent / "Dataset600_SynthNIN"
    aux.mkdir()
    (aux / "dataset.json").write_text(json.dumps({"nl_source_dataset": "Dataset099_Synth"}))


# name: (dim, setup(ds) or None, extra argv, message fragment)
BAD_INPUTS = {
    "unknown dataset": (2, None, ["-d", "987"], "987"),
    "no clean folder": (2, lambda ds: shutil.rmtree(ds / "labelsTr_clean"), [], "labelsTr_clean"),
    "empty clean subset": (2, lambda ds: [p.unlink() for p in (ds / "labelsTr_clean").iterdir()], [],
                           "clean subset is empty"),
    "clean label without a case": (2, lambda ds: shutil.copy(ds / "labelsTr_clean" / "case_000.png",
                                                             ds / "labelsTr_clean" / "case_999.png"), [],
                                   "no matching case"),
    "missing image channel": (2, lambda ds: (ds / "imagesTr" / "case_004_0000.png").unlink(), [], "case_004_0000"),
    "unknown label value": (2, bad.unknown_label, [], "not declared"),
    "image/label shape mismatch": (2, bad.shape_mismatch_2d, [], "shapes differ"),
    "truncated png label": (2, lambda ds: bad.truncate(ds / "labelsTr" / "case_004.png"), [], "case_004.png"),
    "corrupt png image": (2, lambda ds: (ds / "imagesTr" / "case_004_0000.png").write_bytes(b"not a png"), [],
                          "case_004_0000.png"),
    "truncated nifti label": (3, lambda ds: bad.truncate(ds / "labelsTr" / "case_004.nii.gz"), [], "truncated"),
    "truncated nifti image": (3, lambda ds: bad.truncate(ds / "imagesTr" / "case_004_0000.nii.gz"), [], "truncated"),
    "truncated clean label": (3, lambda ds: bad.truncate(ds / "labelsTr_clean" / "case_001.nii.gz", 0.9), [],
                              "truncated"),
    "NaN intensities": (3, bad.nan_image, [], "NaN"),
    "image/label spacing mismatch": (3, bad.spacing_mismatch, [], "spacings differ"),
    "2D case in a 3D dataset": (3, bad.case_2d_in_3d, [], "is 2D, the other cases are 3D"),
    "unknown trainer": (2, None, ["-tr", "NoSuchTrainer"], "Unknown trainer 'NoSuchTrainer'"),
    "unknown clean-only trainer": (2, None, ["--method", "ensemble", "--clean_only_tr", "nnUNetTrainer_typo"],
                                   "Unknown trainer 'nnUNetTrainer_typo'"),
    "3D configuration for 2D data": (2, None, ["-c", "3d_fullres"], "Configuration '3d_fullres'"),
    "unknown configuration": (3, None, ["-c", "3d_highres"], "Configuration '3d_highres'"),
    "missing --model": (2, None, ["--model", "/no/such/model"], "--model must be a trained"),
    "consistency ratio below 1": (2, None, ["--consistency_ratio", "0.5"], "--consistency_ratio"),
    "consistency ratio nan": (2, None, ["--consistency_ratio", "nan"], "--consistency_ratio"),
    "symlinked labelsTr": (2, lambda ds: bad.symlink_folder(ds, "labelsTr"), [], "symbolic link"),
    "symlinked noise_maps": (2, lambda ds: bad.symlink_folder(ds, "noise_maps"), [], "symbolic link"),
    "symlinked report folder": (2, lambda ds: bad.symlink_folder(ds, "labelsTr_revision_report"), [],
                                "symbolic link"),
    "foreign noise_maps folder": (2, lambda ds: _foreign_folder(ds, "noise_maps"), [], "no earlier revision"),
    "foreign report folder": (2, lambda ds: _foreign_folder(ds, "labelsTr_revision_report"), [],
                              "no earlier revision"),
    "output inside the source": (2, None, ["-o", "INSIDE"], "lies inside the source"),
    "output exists": (2, lambda ds: (ds.parent / "Dataset150_Out").mkdir(), ["-o", "Dataset150_Out"],
                      "already exists"),
    "aux id of another source": (2, _other_source_aux, ["--aux_id", "600"], "built from Dataset099_Synth"),
    "fold without a 5-fold split": (2, None, ["-f", "0"], "use -f all"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_nothing_changes(case, make_dataset, nnunet_env, tmp_path, capsys):
    dim, setup, extra, fragment = BAD_INPUTS[case]
    ds = make_dataset(101, name="Synth", dim=dim, num_cases=6, num_clean=2)
    if setup is not None:
        setup(ds)
    argv = ["-d", str(ds), "--no_pbar", "-device", "cpu"]
    extra = [str(ds / "sub" / "Dataset151_In") if a == "INSIDE" else a for a in extra]
    if "-d" in extra:
        argv = argv[2:]
    bad.assert_refused(main, argv + extra, fragment, tmp_path, capsys)


# ------------------------------------------------------------------------------------------------ runs that succeed
class CleanStep:
    """Fake model step: 'predicts' each case's label eroded back (the synthetic noise is a 2-voxel dilation), so
    revised labels differ from the imperfect ones."""

    def __call__(self, aux: rv_aux.AuxDataset, out: Path) -> dict:
        from scipy import ndimage

        from nnunet_noisylabels.common.raw_dataset import reader_writer

        fe = aux.dataset_json["file_ending"]
        rw = reader_writer(aux.dataset_json, aux.images_ts / f"{aux.predict_ids[0]}_0000{fe}")
        C = 1
        for c in aux.predict_ids:
            lab, props = rw.read_seg(str(aux.images_ts / f"{c}_{C:04d}{fe}"))
            rw.write_seg(ndimage.binary_erosion(lab[0], iterations=1).astype(np.uint8), str(out / f"{c}{fe}"), props)
        return {"fake": True}


def _digest(p: Path) -> str:
    import hashlib

    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_stray_files_in_label_folders_are_kept(make_dataset, nnunet_env):
    """Everything in labelsTr/ and noise_maps/ that is not a label file of a case stays where the user put it, with
    its content, through a revision and a re-run."""
    ds = make_dataset(101, name="Synth", dim=2, num_cases=6, num_clean=2)
    lab = ds / "labelsTr"
    (lab / "notes.txt").write_text("annotator 2 did cases 3-5\n")
    shutil.copy(lab / "case_003.png", lab / "case_003_v2_backup.PNG")
    (lab / "old").mkdir()
    (lab / "old" / "case_001.png").write_bytes((lab / "case_001.png").read_bytes())
    (lab / "case_005.jpg").write_bytes(b"\xff\xd8 a label saved with the wrong ending")
    (lab / ".hidden").write_text("editor state\n")
    stray = {p: _digest(p) for p in (lab / "notes.txt", lab / "case_003_v2_backup.PNG", lab / "old" / "case_001.png",
                                     lab / "case_005.jpg", lab / ".hidden")}
    imperfect = {p.name: _digest(p) for p in lab.glob("case_00?.png")}
    rv.revise_dataset(ds, model_step=CleanStep(), progress=False, log=lambda s: None, report=False)
    assert {p: _digest(p) for p in stray} == stray
    assert {p.name: _digest(p) for p in (ds / "labelsTr_imperfect").iterdir()} == imperfect
    assert _digest(lab / "case_004.png") != imperfect["case_004.png"]  # it was revised
    (ds / "noise_maps" / "README").write_text("my note on the noise maps\n")
    rv.revise_dataset(ds, model_step=CleanStep(), progress=False, log=lambda s: None, report=False)
    assert {p: _digest(p) for p in stray} == stray
    assert (ds / "noise_maps" / "README").read_text() == "my note on the noise maps\n"
    assert not list(ds.glob("*.tmp-*")) and not list(ds.glob("*.old-*"))


def test_stale_output_temporary_folder_is_cleaned(make_dataset, nnunet_env):
    """A run killed in -o mode leaves its hidden temporary folder; the next run of that output removes it (and only
    folders of exactly that naming scheme)."""
    ds = make_dataset(101, name="Synth", dim=2, num_cases=6, num_clean=2)
    raw = ds.parent
    stale = raw / ".Dataset102_Out.tmp-deadbeef"
    (stale / "labelsTr").mkdir(parents=True)
    not_ours = raw / ".Dataset102_Out.tmp-mine"
    not_ours.mkdir()
    rv.revise_dataset(ds, model_step=CleanStep(), output_dataset="Dataset102_Out", progress=False,
                      log=lambda s: None, report=False)
    assert not stale.exists() and not_ours.is_dir()
    assert (raw / "Dataset102_Out" / "labelsTr_revision.json").is_file()


def test_labels_added_after_a_revision_are_not_dropped(make_dataset, nnunet_env, capsys):
    ds = make_dataset(101, name="Synth", dim=2, num_cases=6, num_clean=2)
    rv.revise_dataset(ds, model_step=CleanStep(), progress=False, log=lambda s: None, report=False)
    shutil.copy(ds / "labelsTr" / "case_004.png", ds / "labelsTr" / "case_777.png")
    shutil.copy(ds / "imagesTr" / "case_004_0000.png", ds / "imagesTr" / "case_777_0000.png")
    before = tree_state(ds)
    assert main(["-d", str(ds), "--no_pbar", "-device", "cpu"]) == 2
    assert "case_777" in capsys.readouterr().err
    assert tree_state(ds) == before


KILL_SCRIPT = r"""
import os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from nnunet_noisylabels.revision import api as rv
from nnunet_noisylabels.revision import output as rv_out
from test_faults_revise import CleanStep

real = rv_out.swap_in_folder
def swap_then_die(tmp, target):
    real(tmp, target)
    if Path(target).name == {die_after!r}:
        os._exit(9)  # SIGKILL-like: no handler, no cleanup
rv_out.swap_in_folder = swap_then_die
rv.revise_dataset({ds!r}, model_step=CleanStep(), progress=False, log=lambda s: None, report=False)
"""


@pytest.mark.parametrize("die_after", ["noise_maps", "labelsTr"])
def test_kill_around_the_swap_is_noticed_by_the_rerun(die_after, make_dataset, nnunet_env):
    """A run killed after noise_maps/ was swapped in (labels not yet) or after labelsTr/ was (manifest not yet in
    place): the re-run's recovery either drops the manifest written for labels that never arrived, or puts it in
    place for the labels that did; labelsTr/ never stays revised without its manifest."""
    ds = make_dataset(101, name="Synth", dim=2, num_cases=6, num_clean=2)
    imperfect = {p.name: _digest(p) for p in (ds / "labelsTr").iterdir()}
    script = KILL_SCRIPT.format(tests=str(REPO_ROOT / "tests"), die_after=die_after, ds=str(ds))
    proc = subprocess.run([sys.executable, "-c", script], env=nnunet_env, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert not (ds / "labelsTr_revision.json").exists()
    assert (ds / ".labelsTr_revision.json.pending").is_file()
    labels_now = {p.name: _digest(p) for p in (ds / "labelsTr").iterdir()}
    done = rv_inputs.recover_interrupted_swap(ds)
    assert not (ds / ".labelsTr_revision.json.pending").exists()
    if die_after == "labelsTr":
        assert labels_now != imperfect
        assert any("wrote its manifest" in d for d in done)
        manifest = json.loads((ds / "labelsTr_revision.json").read_text())
        assert {f"{c}.png": r["revised_sha256"] for c, r in manifest["cases"].items()} == labels_now
    else:
        assert labels_now == imperfect
        assert any("never swapped in" in d for d in done)
        assert not (ds / "labelsTr_revision.json").exists()
    rv.revise_dataset(ds, model_step=CleanStep(), progress=False, log=lambda s: None, report=False)
    assert (ds / "labelsTr_revision.json").is_file()
    assert {p.name: _digest(p) for p in (ds / "labelsTr_imperfect").iterdir()} == imperfect


def test_outputs_respect_the_umask(make_dataset, nnunet_env):
    ds = make_dataset(101, name="Synth", dim=2, num_cases=6, num_clean=2)
    old = os.umask(0o022)
    try:
        rv.revise_dataset(ds, model_step=CleanStep(), progress=False, log=lambda s: None, report=True)
    finally:
        os.umask(old)
    for p in [ds / "labelsTr", ds / "labelsTr_imperfect", ds / "noise_maps", ds / "labelsTr_revision_report"]:
        assert oct(p.stat().st_mode & 0o777) == oct(0o755), p
    for p in [ds / "labelsTr_revision.json", ds / "labelsTr" / "case_004.png", ds / "noise_maps" / "case_004.png",
              ds / "labelsTr_revision_report" / "report.json", ds / "labelsTr_revision_report" / "report.md"]:
        assert oct(p.stat().st_mode & 0o777) == oct(0o644), p
