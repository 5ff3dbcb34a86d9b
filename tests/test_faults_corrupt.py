"""Fault suite of ``nnUNetv2_nl_corrupt``: bad inputs are refused before anything is written, ``--overwrite`` replaces
only a dataset this toolkit wrote, and what it writes respects the umask.

Each bad input of the table must exit with 2, say what is wrong, and leave the whole nnU-Net folder tree (and
anything beside it) exactly as it was: every file's hash, every folder and link, every mode.
"""
from __future__ import annotations

import json
import os
import stat

import pytest

import bad_inputs as bad
from nnunet_noisylabels.cli.corrupt import main
from nnunet_noisylabels.corruption.dataset import MANIFEST_NAME, corrupt_dataset

TARGET = "Dataset120_Synth_dilate"


def _existing_target(ds, extra=None, ours=True):
    """A dataset at the target: written by corrupt (``ours``) or by hand, plus ``extra`` entries of a user's."""
    if ours:
        out = corrupt_dataset(ds.name, 120, "dilate", pbar=False)
    else:
        out = ds.parent / TARGET
        (out / "labelsTr").mkdir(parents=True)
        (out / "dataset.json").write_text(json.dumps({"name": TARGET}))
    for name in extra or []:
        if name.endswith("/"):
            (out / name).mkdir()
            (out / name / "expert_case_000.png").write_bytes(b"an expert's label")
        else:
            (out / name).write_text("my notes\n")
    return out


def _symlinked_target(ds):
    real = ds.parent.parent / "elsewhere"
    real.mkdir()
    (real / "notes.txt").write_text("my notes\n")
    os.symlink(real, ds.parent / TARGET)


# name: (dim, setup(ds) or None, extra argv, message fragment)
BAD_INPUTS = {
    "unknown dataset": (2, None, ["-d", "987"], "987"),
    "unknown label value": (2, bad.unknown_label, [], "not declared"),
    "image/label shape mismatch": (2, bad.shape_mismatch_2d, [], "shapes differ"),
    "truncated png label": (2, lambda ds: bad.truncate(ds / "labelsTr" / "case_004.png"), [], "case_004.png"),
    "truncated nifti label": (3, lambda ds: bad.truncate(ds / "labelsTr" / "case_004.nii.gz"), [], "truncated"),
    "truncated nifti image": (3, lambda ds: bad.truncate(ds / "imagesTr" / "case_004_0000.nii.gz"), [],
                              "truncated"),
    "NaN intensities": (3, bad.nan_image, [], "NaN"),
    "image/label spacing mismatch": (3, bad.spacing_mismatch, [], "spacings differ"),
    "2D case in a 3D dataset": (3, bad.case_2d_in_3d, [], "['case_004'] are 2D, the other cases are 3D"),
    "target exists": (2, _existing_target, [], "pass --overwrite"),
    "overwrite a dataset of the user's": (2, lambda ds: _existing_target(ds, ours=False), ["--overwrite"],
                                          "was not written by nnUNetv2_nl_corrupt"),
    "overwrite with user notes inside": (2, lambda ds: _existing_target(ds, ["notes.txt"]), ["--overwrite"],
                                         "holds notes.txt"),
    "overwrite with an expert label folder": (2, lambda ds: _existing_target(ds, ["labelsTr_expert/"]),
                                              ["--overwrite"], "holds labelsTr_expert"),
    "overwrite a revised dataset": (2, lambda ds: _existing_target(ds, ["labelsTr_imperfect/",
                                                                        "labelsTr_revision.json"]),
                                    ["--overwrite"], "holds labelsTr_imperfect, labelsTr_revision.json"),
    "overwrite a symlinked target": (2, _symlinked_target, ["--overwrite"], "symbolic link"),
    "overwrite a file": (2, lambda ds: (ds.parent / TARGET).write_text("not a dataset"), ["--overwrite"],
                         "not a folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_nothing_changes(case, make_dataset, nnunet_env, tmp_path, capsys):
    dim, setup, extra, fragment = BAD_INPUTS[case]
    ds = make_dataset(101, name="Synth", dim=dim, num_cases=6, num_clean=2)
    if setup is not None:
        setup(ds)
    argv = ["-d", ds.name, "-o", "120", "--noise", "dilate", "--no_pbar"]
    if "-d" in extra:
        argv = argv[2:]
    bad.assert_refused(main, argv + extra, fragment, tmp_path, capsys)


def test_overwrite_replaces_its_own_dataset(make_dataset, nnunet_env):
    ds = make_dataset(101, name="Synth", dim=2, num_cases=6, num_clean=2)
    out = _existing_target(ds)
    first = json.loads((out / MANIFEST_NAME).read_text())
    assert main(["-d", ds.name, "-o", "120", "--noise", "dilate", "--seed", "3", "--overwrite", "--no_pbar"]) == 0
    assert json.loads((out / MANIFEST_NAME).read_text())["seed"] == 3 != first["seed"]
    assert sorted(p.name for p in ds.parent.iterdir()) == sorted([ds.name, TARGET])


def test_interrupted_runs_are_cleaned_up(make_dataset, nnunet_env):
    """A run killed while writing leaves ``.tmp_<target>_XXXXXXXX``; one killed between the two renames of the
    replacement leaves the old dataset at ``.old_<target>_XXXXXXXX`` and no target. The next run puts the old
    dataset back (so it is refused without --overwrite as before) and removes the rest; folders of other names stay.
    """
    ds = make_dataset(101, name="Synth", dim=2, num_cases=6, num_clean=2)
    raw = ds.parent
    out = _existing_target(ds)
    out.rename(raw / f".old_{TARGET}_0123abcd")
    (raw / f".tmp_{TARGET}_x1y2z3_w" / "labelsTr").mkdir(parents=True)
    (raw / f".tmp_{TARGET}_mine").mkdir()
    assert main(["-d", ds.name, "-o", "120", "--noise", "dilate", "--no_pbar"]) == 2
    assert (out / MANIFEST_NAME).is_file()
    assert sorted(p.name for p in raw.iterdir()) == sorted([ds.name, TARGET, f".tmp_{TARGET}_mine"])


@pytest.mark.parametrize("umask", [0o002, 0o027])
def test_written_dataset_respects_the_umask(umask, make_dataset, nnunet_env):
    ds = make_dataset(101, name="Synth", dim=2, num_cases=4, num_clean=1)
    old = os.umask(umask)
    try:
        out = corrupt_dataset(ds.name, 120, "dilate", clean_count=1, copy_images=True, pbar=False)
    finally:
        os.umask(old)
    for p in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        if p.is_dir():
            assert mode == 0o777 & ~umask, p
        elif p.parent.name == "labelsTr" or p.suffix == ".json":  # written by us (copies keep the source's mode)
            assert mode == 0o666 & ~umask, p
