"""``NoiseIdentificationTrainer`` through nnU-Net: plans, preprocesses and trains on a tiny synthetic auxiliary
dataset with planted systematic noise and checks that the revised masks are closer to the truth than the imperfect
labels (slow)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import console_script, run

from nnunet_noisylabels.common.metrics import mean_foreground_dice
from nnunet_noisylabels.revision.aux_dataset import (aux_dataset_json_keys, imperfect_label_to_channels,
                                                     label_channel_names)
from nnunet_noisylabels.revision.nin.fusion import fuse_logits, one_hot, split_branches
from nnunet_noisylabels.revision.nin.label_input import imperfect_label_from_channels

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------- nnU-Net end to end
def _blob_case(rng: np.random.Generator, shape: tuple[int, ...], num_classes: int):
    """Image with one bright ball per foreground class on a noisy background, and its clean label."""
    grid = np.indices(shape)
    clean = np.zeros(shape, np.uint8)
    image = rng.normal(0.0, 0.08, shape)
    for k in range(1, num_classes):
        centre = [rng.integers(s // 4, 3 * s // 4) for s in shape]
        r = rng.integers(min(shape) // 8, min(shape) // 5 + 1)
        inside = (sum((g - c) ** 2 for g, c in zip(grid, centre)) <= r ** 2) & (clean == 0)
        clean[inside] = k
        image[inside] += 0.4 * k
    return np.clip(image * 200 + 40, 0, 255).astype(np.uint8), clean


def plant_noise(clean: np.ndarray, num_classes: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Systematic imperfections: 'dilate' over-annotates every structure by 3-4 px; 'box' replaces each by its box."""
    from scipy import ndimage

    out = np.zeros_like(clean)
    for k in range(1, num_classes):
        m = clean == k
        if kind == "dilate":
            m = ndimage.binary_dilation(m, iterations=int(rng.integers(3, 5)))
        elif kind == "box":
            sl = ndimage.find_objects(m.astype(np.uint8))[0]
            m = np.zeros_like(m)
            m[sl] = True
        out[m & (out == 0)] = k
    return out


def _save(array: np.ndarray, path: Path) -> None:
    if path.suffix == ".png":
        from skimage.io import imsave

        imsave(path, array, check_contrast=False)
    else:
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def write_aux_dataset(root: Path, name: str, n_train: int, n_test: int, num_classes: int, kind: str,
                      seed: int = 0, shape: tuple[int, ...] = (64, 64)) -> dict:
    """Write an auxiliary noise-identification dataset (PNG in 2D, NIfTI in 3D).

    Returns:
        {case: (clean, imperfect)} of the ``imagesTs`` cases.
    """
    rng = np.random.default_rng(seed)
    ending = ".png" if len(shape) == 2 else ".nii.gz"
    ds = root / name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    held_out = {}
    for i in range(n_train + n_test):
        case = f"case_{i:03d}"
        image, clean = _blob_case(rng, shape, num_classes)
        imperfect = plant_noise(clean, num_classes, kind, rng)
        folder = ds / ("imagesTr" if i < n_train else "imagesTs")
        _save(image, folder / f"{case}_0000{ending}")
        for k, ch in enumerate(imperfect_label_to_channels(imperfect, num_classes), start=1):
            _save(ch, folder / f"{case}_{k:04d}{ending}")
        if i < n_train:
            _save(clean, ds / "labelsTr" / f"{case}{ending}")
        else:
            held_out[case] = (clean, imperfect)
    labels = {"background": 0, **{f"structure{k}": k for k in range(1, num_classes)}}
    dataset_json = {"channel_names": label_channel_names({"0": "zscore"}, num_classes), "labels": labels,
                    "numTraining": n_train, "file_ending": ending, **aux_dataset_json_keys(1, num_classes)}
    (ds / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return held_out


def dice(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    return mean_foreground_dice(a, b, range(1, num_classes))


def shrink_plans(preprocessed: Path, dataset: str, max_features: int = 32) -> None:
    """Cap the width of the planned network (a plain plans edit) so CPU tests train in seconds, not minutes."""
    plans_file = preprocessed / dataset / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    for cfg in plans["configurations"].values():
        kw = cfg.get("architecture", {}).get("arch_kwargs")
        if kw:
            kw["features_per_stage"] = [min(f // 4, max_features) for f in kw["features_per_stage"]]
    plans_file.write_text(json.dumps(plans, indent=2))


@pytest.mark.slow
@pytest.mark.parametrize("num_classes,kind", [(2, "dilate")])
def test_trainer_revises_planted_noise_through_nnunet(tmp_path, nnunet_env, num_classes, kind):
    """Train through nnU-Net (plan, preprocess, train, predict imagesTs) and beat the imperfect labels' Dice."""
    from skimage.io import imread

    raw = Path(nnunet_env["nnUNet_raw"])
    held_out = write_aux_dataset(raw, "Dataset901_NINtest", n_train=8, n_test=4, num_classes=num_classes, kind=kind)
    env = dict(nnunet_env, nnUNet_nl_epochs="4", nnUNet_nl_iterations="40", nnUNet_nl_val_iterations="2")
    run([console_script("nnUNetv2_plan_and_preprocess"), "-d", "901", "-c", "2d", "-np", "1",
         "--verify_dataset_integrity"], env)
    shrink_plans(Path(env["nnUNet_preprocessed"]), "Dataset901_NINtest")
    run([console_script("nnUNetv2_train"), "901", "2d", "all", "-tr", "NoiseIdentificationTrainer_budget",
         "-device", "cpu"], env)
    out_dir = tmp_path / "pred"
    run([console_script("nnUNetv2_predict"), "-d", "901", "-c", "2d", "-f", "all",
         "-tr", "NoiseIdentificationTrainer_budget", "-i", str(raw / "Dataset901_NINtest" / "imagesTs"),
         "-o", str(out_dir), "-device", "cpu", "-npp", "0", "-nps", "0"], env)
    d_imperfect, d_revised = [], []
    for case, (clean, imperfect) in held_out.items():
        revised = imread(out_dir / f"{case}.png")
        assert revised.shape == clean.shape
        d_imperfect.append(dice(imperfect, clean, num_classes))
        d_revised.append(dice(revised, clean, num_classes))
    # a no-op revision (revised == imperfect) fails this margin
    assert np.mean(d_revised) > np.mean(d_imperfect) + 0.1, (d_imperfect, d_revised)

    # noise maps: the over-annotation head fires on the planted dilation ring, not on the true structure. After so
    # short a training its probabilities are not calibrated yet (ring means from 0.10 to 0.95 were seen), so
    # the check is discrimination, pooled over the held-out cases: a ring pixel scores higher than a structure pixel
    # (ROC AUC, 0.5 for a head that ignores the ring), and the structure stays below 0.5.
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from scipy.stats import mannwhitneyu

    from nnunet_noisylabels.revision.nin.trainer import predict_branch_logits

    model = Path(env["nnUNet_results"]) / "Dataset901_NINtest" / "NoiseIdentificationTrainer_budget__nnUNetPlans__2d"
    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), ("all",))
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    over_ring, over_core = [], []
    for case, (clean, imperfect) in sorted(held_out.items()):
        files = [str(raw / "Dataset901_NINtest" / "imagesTs" / f"{case}_{c:04d}.png") for c in range(num_classes)]
        data, _, _ = preprocessor.run_case(files, None, predictor.plans_manager, predictor.configuration_manager,
                                           predictor.dataset_json)
        data = torch.from_numpy(data)
        heads = split_branches(predict_branch_logits(predictor, data)[None], num_classes)  # (1, K, 1, X, Y) each
        assert predictor.network.eval_output == "fused"  # restored
        over = torch.sigmoid(heads["over"][0, 1, 0]).numpy()  # (X, Y): 2D cases are (1, X, Y) after preprocessing
        assert over.shape == clean.shape
        over_ring.append(over[(imperfect == 1) & (clean == 0)])
        over_core.append(over[clean == 1])
    over_ring, over_core = np.concatenate(over_ring).astype(float), np.concatenate(over_core).astype(float)
    auc = mannwhitneyu(over_ring, over_core).statistic / (over_ring.size * over_core.size)
    assert auc > 0.8 and over_core.mean() < 0.5, (auc, over_ring.mean(), over_core.mean())
    # fusing the heads reproduces the fused output the stock predictor exports (the last case)
    fused = predictor.predict_logits_from_preprocessed_data(data)
    y = one_hot(imperfect_label_from_channels(data[None, 1:]), num_classes)
    refused = fuse_logits(heads["revised"], heads["over"], heads["under"], y, predictor.network.fusion)[0]
    assert torch.equal(fused.argmax(0), refused.argmax(0))


@pytest.mark.slow
def test_debug_trainer_3d_multiclass_trains_validates_and_predicts(tmp_path, nnunet_env):
    """Plumbing in 3D with K=3: training, nnU-Net's final validation and stock prediction all run."""
    import SimpleITK as sitk

    raw = Path(nnunet_env["nnUNet_raw"])
    held_out = write_aux_dataset(raw, "Dataset903_NIN3D", n_train=5, n_test=2, num_classes=3, kind="box",
                                 shape=(20, 24, 24))
    run([console_script("nnUNetv2_plan_and_preprocess"), "-d", "903", "-c", "3d_fullres", "-np", "1"], nnunet_env)
    shrink_plans(Path(nnunet_env["nnUNet_preprocessed"]), "Dataset903_NIN3D")
    run([console_script("nnUNetv2_train"), "903", "3d_fullres", "all", "-tr", "NoiseIdentificationTrainer_debug",
         "-device", "cpu"], nnunet_env)
    model = Path(nnunet_env["nnUNet_results"]) / "Dataset903_NIN3D" / \
        "NoiseIdentificationTrainer_debug__nnUNetPlans__3d_fullres" / "fold_all"
    assert (model / "checkpoint_final.pth").is_file()
    summary = json.loads((model / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}
    out_dir = tmp_path / "pred"
    run([console_script("nnUNetv2_predict"), "-d", "903", "-c", "3d_fullres", "-f", "all",
         "-tr", "NoiseIdentificationTrainer_debug", "-i", str(raw / "Dataset903_NIN3D" / "imagesTs"),
         "-o", str(out_dir), "-device", "cpu", "-npp", "0", "-nps", "0"], nnunet_env)
    for case, (clean, _) in held_out.items():
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / f"{case}.nii.gz")))
        assert pred.shape == clean.shape and set(np.unique(pred)) <= {0, 1, 2}
