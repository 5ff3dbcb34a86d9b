"""The uncertain band through nnU-Net itself: revise with ``--uncertain_band`` (3D, multi-class), then train and
predict with the stock commands; and an RGB 2D dataset with an ignore label (nnU-Net's issue #2567 path)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from conftest import console_script, run
from nnunet_noisylabels.common.raw_dataset import read_label


def _train_log(results: Path) -> str:
    return "\n".join(p.read_text() for p in results.rglob("training_log_*.txt"))


def _band_fractions(log: str) -> list[float]:
    return [float(line.split("band fraction")[1].split()[0]) for line in log.splitlines() if "band fraction" in line]


@pytest.mark.slow
def test_revise_with_band_then_train_and_predict_3d_multiclass(dataset_3d_multiclass, nnunet_env, tmp_path):
    env = nnunet_env
    run([console_script("nnUNetv2_nl_revise"), "-d", "4", "-o", "Dataset014_Band", "--uncertain_band", "-tr",
         "NoiseIdentificationTrainer_debug", "-device", "cpu", "--no_pbar", "--no_report"], env)
    out = Path(env["nnUNet_raw"]) / "Dataset014_Band"
    djson = json.loads((out / "dataset.json").read_text())
    assert djson["labels"]["ignore"] == 3
    manifest = json.loads((out / "labelsTr_revision.json").read_text())
    clean = set(djson["nnunet_noisylabels"]["clean_cases"])
    assert clean == {c for c, r in manifest["cases"].items() if r["source"] == "clean"} and len(clean) == 2
    marked = 0
    for case, rec in manifest["cases"].items():
        labels = read_label(out / "labelsTr" / f"{case}.nii.gz", djson)[0]
        if case in clean:
            assert not (labels == 3).any()
        else:
            assert rec["band_voxels"] == int((labels == 3).sum())
            hard = read_label(out / "labelsTr_hard" / f"{case}.nii.gz", djson)[0]
            np.testing.assert_array_equal(labels[labels != 3], hard[labels != 3])
            marked += rec["band_voxels"]
    assert marked > 0  # a 2-epoch model is unsure somewhere

    run([console_script("nnUNetv2_plan_and_preprocess"), "-d", "14", "-c", "3d_fullres", "-np", "1"], env)
    run([console_script("nnUNetv2_train"), "14", "3d_fullres", "all", "-tr", "NoiseRobustTrainer_debug", "-device",
         "cpu"], env)
    log = _train_log(Path(env["nnUNet_results"]))
    assert "'ignore_label': 3" in log and "'clean_cases_with_hard_targets': 2" in log
    assert max(_band_fractions(log)) > 0  # the peer supervised the band
    pred = tmp_path / "pred"
    run([console_script("nnUNetv2_predict"), "-i", str(dataset_3d_multiclass / "imagesTs"), "-o", str(pred), "-d",
         "14", "-c", "3d_fullres", "-f", "all", "-tr", "NoiseRobustTrainer_debug", "-device", "cpu", "-npp", "0",
         "-nps", "0", "--disable_progress_bar"], env)
    files = sorted(pred.glob("*.nii.gz"))
    assert len(files) == 2
    for f in files:  # the ignore label is never predicted
        assert set(np.unique(read_label(f, djson)[0])) <= {0, 1, 2}


def _rgb_dataset(raw: Path, dataset_id: int) -> Path:
    """2D RGB PNG (one file, three channels) with an ignore band around each disk on the noisy cases."""
    from skimage import io

    root = raw / f"Dataset{dataset_id:03d}_RGBBand"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    for i in range(8):
        cy, cx = rng.integers(14, 26, 2)
        lab = (((yy - cy) ** 2 + (xx - cx) ** 2) < 64).astype(np.uint8)
        img = np.stack([lab * 120 + rng.normal(60, 15, lab.shape), 200 - lab * 100 + rng.normal(0, 10, lab.shape),
                        rng.normal(100, 20, lab.shape)], -1).clip(0, 255).astype(np.uint8)
        if i >= 2:
            band = ndimage.binary_dilation(lab, iterations=2) & ~ndimage.binary_erosion(lab, iterations=2)
            lab[band] = 2
        io.imsave(root / "imagesTr" / f"rgb_{i}_0000.png", img, check_contrast=False)
        io.imsave(root / "labelsTr" / f"rgb_{i}.png", lab, check_contrast=False)
        if i < 2:
            io.imsave(root / "imagesTs" / f"rgbts_{i}_0000.png", img, check_contrast=False)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "disk": 1, "ignore": 2},
        "numTraining": 8, "file_ending": ".png", "nnunet_noisylabels": {"clean_cases": ["rgb_0", "rgb_1"]}}))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["nnUNetTrainer_debug", "NoiseRobustTrainer_debug"])
def test_rgb_2d_with_ignore_label_trains_and_predicts(nnunet_env, tmp_path, trainer):
    env = nnunet_env
    root = _rgb_dataset(Path(env["nnUNet_raw"]), 881)
    run([console_script("nnUNetv2_plan_and_preprocess"), "-d", "881", "-c", "2d", "-np", "1"], env)
    run([console_script("nnUNetv2_train"), "881", "2d", "all", "-tr", trainer, "-device", "cpu"], env)
    log = _train_log(Path(env["nnUNet_results"]))
    if trainer.startswith("NoiseRobust"):
        assert max(_band_fractions(log)) > 0
    pred = tmp_path / "pred"
    run([console_script("nnUNetv2_predict"), "-i", str(root / "imagesTs"), "-o", str(pred), "-d", "881", "-c", "2d",
         "-f", "all", "-tr", trainer, "-device", "cpu", "-npp", "0", "-nps", "0", "--disable_progress_bar"], env)
    djson = json.loads((root / "dataset.json").read_text())
    for f in sorted(pred.glob("*.png")):
        assert set(np.unique(read_label(f, djson)[0])) <= {0, 1}
    assert len(list(pred.glob("*.png"))) == 2
