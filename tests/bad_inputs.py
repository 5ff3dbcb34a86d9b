"""Ways a user's raw dataset goes wrong, for the fault suites: each function damages one case of a synthetic dataset
(see :func:`nnunet_noisylabels.common.synthetic.write_synthetic_dataset`, cases ``case_000`` ...) in place."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image


def rewrite_nifti(path: Path, change) -> None:
    img = sitk.ReadImage(str(path))
    new = change(img)
    sitk.WriteImage(new, str(path))


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def nan_image(ds: Path) -> None:
    p = ds / "imagesTr" / "case_003_0000.nii.gz"
    img = sitk.ReadImage(str(p))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    arr[3, 4, 5] = np.nan
    new = sitk.GetImageFromArray(arr)
    new.CopyInformation(img)
    sitk.WriteImage(new, str(p))


def spacing_mismatch(ds: Path) -> None:
    def change(img):
        img.SetSpacing((1.0, 1.0, 2.5))
        return img

    rewrite_nifti(ds / "labelsTr" / "case_004.nii.gz", change)


def case_2d_in_3d(ds: Path) -> None:
    for sub, name in (("imagesTr", "case_004_0000.nii.gz"), ("labelsTr", "case_004.nii.gz")):
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(ds / sub / name)))[12]
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(ds / sub / name))


def shape_mismatch_2d(ds: Path) -> None:
    Image.fromarray(np.zeros((40, 64), np.uint8)).save(ds / "imagesTr" / "case_004_0000.png")


def unknown_label(ds: Path) -> None:
    p = ds / "labelsTr" / "case_005.png"
    arr = np.array(Image.open(p))
    arr[0, 0] = 7
    Image.fromarray(arr).save(p)


def symlink_folder(ds: Path, name: str) -> Path:
    """Replace ``ds/name`` by a link to a folder outside the nnU-Net tree (created, with a note, if missing)."""
    real = ds.parent.parent / f"elsewhere_{name}"
    if (ds / name).is_dir():
        shutil.move(str(ds / name), real)
    else:
        real.mkdir()
        (real / "report.md").write_text("my own notes\n")
    os.symlink(real, ds / name)
    return real


def assert_refused(main, argv: list[str], fragment: str, root: Path, capsys) -> None:
    """Run a command's ``main``: it must exit with 2, say ``fragment`` on stderr and leave everything under ``root``
    as it was (every file's hash, every folder, link and mode)."""
    from conftest import tree_state

    before = tree_state(root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err, err
    assert tree_state(root) == before
