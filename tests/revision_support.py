"""Shared pieces of the label-revision tests: synthetic datasets with known truth and fake model steps that
stand in for nnU-Net training (they write the truth, a shifted copy, probabilities ...)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnunet_noisylabels.common.raw_dataset import reader_writer
from nnunet_noisylabels.revision import auxiliary as rv_aux
from nnunet_noisylabels.revision import inputs as rv_inputs
from nnunet_noisylabels.revision.aux_dataset import label_channel_indices


def disk(shape, center, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius ** 2


def write_png(arr, path):
    from skimage.io import imsave

    imsave(str(path), arr.astype(np.uint8), check_contrast=False)


def write_nii(arr, path, spacing=(1.0, 1.0, 1.0)):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


def make_dataset(root: Path, dim: int = 2, n_cases: int = 6, n_clean: int = 2, num_classes: int = 2,
                 name: str = "Dataset101_Toy") -> tuple[Path, Path]:
    """A tiny raw dataset: truth = disks (classes 1..K-1), imperfect = truth dilated by 2 voxels (over-annotation).

    Returns (dataset folder, folder of true labels)."""
    rng = np.random.default_rng(0)
    ds = root / name
    truth_dir = root.parent / f"{name}_truth"  # outside nnUNet_raw: not a dataset
    for sub in ("imagesTr", "labelsTr", "labelsTr_clean"):
        (ds / sub).mkdir(parents=True)
    truth_dir.mkdir()
    fe = ".png" if dim == 2 else ".nii.gz"
    shape = (32, 32) if dim == 2 else (12, 20, 20)
    for i in range(n_cases):
        case = f"toy_{i:03d}"
        truth = np.zeros(shape, np.uint8)
        for k in range(1, num_classes):
            c = [s // 2 + rng.integers(-3, 4) for s in shape]
            c[-1] += (k - 1) * 6 - 3 * (num_classes > 2)
            truth[disk(shape, c, 4 if dim == 2 else 3) & (truth == 0)] = k
        imperfect = np.zeros_like(truth)
        for k in range(1, num_classes):
            imperfect[ndimage.binary_dilation(truth == k, iterations=2) & (imperfect == 0)] = k
        image = (truth * 60 + rng.normal(60, 10, shape)).clip(0, 255).astype(np.uint8)
        write = write_png if dim == 2 else write_nii
        write(image, ds / "imagesTr" / f"{case}_0000{fe}")
        write(imperfect, ds / "labelsTr" / f"{case}{fe}")
        write(truth, truth_dir / f"{case}{fe}")
        if i < n_clean:
            write(truth, ds / "labelsTr_clean" / f"{case}{fe}")
    labels = {"background": 0, **{f"c{k}": k for k in range(1, num_classes)}}
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "gray" if dim == 2 else "MRI"},
                                                 "labels": labels, "numTraining": n_cases, "file_ending": fe}))
    return ds, truth_dir


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (to prove nothing changed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class TruthStep:
    """Fake model step: 'predicts' the true label of every case (and records what it was given)."""

    def __init__(self, truth_dir: Path, fail: BaseException | None = None, bad_shape: bool = False):
        self.truth_dir, self.fail, self.bad_shape, self.calls = truth_dir, fail, bad_shape, []

    def __call__(self, aux: rv_aux.AuxDataset, out: Path) -> dict:
        self.calls.append(aux)
        fe = aux.dataset_json["file_ending"]
        self.seen_label_channels = {}
        if aux.method == "nin":
            C, chans = label_channel_indices(aux.dataset_json)
            rw = reader_writer(aux.dataset_json, aux.images_ts / f"{aux.predict_ids[0]}_0000{fe}")
            for c in aux.predict_ids:
                self.seen_label_channels[c] = [rw.read_seg(str(aux.images_ts / f"{c}_{i:04d}{fe}"))[0]
                                               for i in chans]
        if self.fail is not None:
            raise self.fail
        for c in aux.predict_ids:
            if self.bad_shape:
                write_png(np.zeros((8, 8), np.uint8), out / f"{c}{fe}")
            else:
                shutil.copy(self.truth_dir / f"{c}{fe}", out / f"{c}{fe}")
        return {"fake": True}


def read_array(path):
    import SimpleITK as sitk
    from skimage.io import imread

    return imread(str(path)) if str(path).endswith(".png") else sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def rel_close(a, b):
    return abs(a - b) < 1e-12


class NearTruthStep(TruthStep):
    """Fake model step with a model's small error: the true label minus one foreground voxel."""

    def __call__(self, aux, out):
        info = super().__call__(aux, out)
        for c in aux.predict_ids:
            lab = read_array(out / f"{c}.png")
            first = tuple(np.argwhere(lab > 0)[0])
            lab[first] = 0
            write_png(lab, out / f"{c}.png")
        return info


class ProbStep:
    """Fake model step that writes what ``nnUNetPredictor(save_probabilities=True)`` writes: per case a label file,
    ``.npz`` probabilities (K, *label shape) and ``.pkl`` image properties. Its probabilities put 0.75 on the true
    class and 0.25 on the next one, except on ``wrong`` voxels (a function of the case's truth) where 0.6 goes to
    the wrong class: alone it mislabels those voxels, averaged with a step that is wrong elsewhere it is right."""

    def __init__(self, truth_dir: Path, wrong, num_classes: int = 2):
        self.truth_dir, self.wrong, self.K, self.calls = truth_dir, wrong, num_classes, []

    def __call__(self, aux: rv_aux.AuxDataset, out: Path) -> dict:
        from batchgenerators.utilities.file_and_folder_operations import save_pickle

        self.calls.append(aux)
        fe = aux.dataset_json["file_ending"]
        rw = reader_writer(aux.dataset_json, aux.images_ts / f"{aux.predict_ids[0]}_0000{fe}")
        for c in aux.predict_ids:
            _, props = rw.read_images([str(aux.images_ts / f"{c}_0000{fe}")])
            truth = rw.read_seg(str(self.truth_dir / f"{c}{fe}"))[0][0].astype(int)
            other = (truth + 1) % self.K
            wrong = self.wrong(truth)
            probs = np.zeros((self.K, *truth.shape), np.float32)
            for cls, w_ok, w_bad in ((truth, 0.75, 0.4), (other, 0.25, 0.6)):
                np.put_along_axis(probs, cls[None], np.where(wrong, w_bad, w_ok)[None].astype(np.float32), 0)
            np.savez_compressed(out / f"{c}.npz", probabilities=probs)
            save_pickle(props, str(out / f"{c}.pkl"))
            rw.write_seg(probs.argmax(0).astype(np.uint8), str(out / f"{c}{fe}"), props)
        return {"fake": True, "method": aux.method}


def top_half(truth):
    w = np.zeros(truth.shape, bool)
    w[..., : truth.shape[-2] // 2, :] = True
    return w


def fake_model_folder(folder: Path, inputs: rv_inputs.RevisionInputs, method: str) -> Path:
    """The files a reusable model folder must have (contents faked: the model step is faked too)."""
    (folder / "fold_all").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(rv_aux.aux_dataset_json(inputs, method, folder.name)))
    (folder / "plans.json").write_text("{}")
    (folder / "fold_all" / "checkpoint_final.pth").write_bytes(b"")
    return folder


class FollowingStep:
    """Fake noise identification network that follows a misplaced label half of the way: it predicts the true label
    moved by half the offset between the label input's centroid and the truth's (0 for labels in place)."""

    def __init__(self, truth_dir):
        self.truth_dir, self.calls = truth_dir, []

    def __call__(self, aux, out):
        self.calls.append(aux)
        fe = aux.dataset_json["file_ending"]
        _, chans = label_channel_indices(aux.dataset_json)
        rw = reader_writer(aux.dataset_json, aux.images_ts / f"{aux.predict_ids[0]}_0000{fe}")
        for c in aux.predict_ids:
            label = rw.read_seg(str(aux.images_ts / f"{c}_{chans[0]:04d}{fe}"))[0][0, 0] > 0
            truth = read_array(self.truth_dir / f"{c}{fe}")
            offset = np.array(ndimage.center_of_mass(label)) - np.array(ndimage.center_of_mass(truth > 0))
            write_png(np.roll(truth, tuple(np.rint(offset / 2).astype(int)), axis=(0, 1)), out / f"{c}{fe}")
        return {"fake": True}


class ProbFollowingStep(FollowingStep):
    """Fake member of an ensemble that writes nnU-Net's probabilities: it predicts the true label moved by ``follow``
    times the offset of the label input (1: the network copies a misplaced label; 0: the clean-only model, blind to
    the label), with probability ``confidence`` for the class it predicts."""

    def __init__(self, truth_dir, follow: float, confidence: float):
        super().__init__(truth_dir)
        self.follow, self.confidence = follow, confidence

    def __call__(self, aux, out):
        from batchgenerators.utilities.file_and_folder_operations import save_pickle

        self.calls.append(aux)
        fe = aux.dataset_json["file_ending"]
        rw = reader_writer(aux.dataset_json, aux.images_ts / f"{aux.predict_ids[0]}_0000{fe}")
        for c in aux.predict_ids:
            _, props = rw.read_images([str(aux.images_ts / f"{c}_0000{fe}")])
            truth = read_array(self.truth_dir / f"{c}{fe}")
            pred = truth
            if self.follow:
                label = rw.read_seg(str(aux.images_ts / f"{c}_0001{fe}"))[0][0, 0] > 0
                offset = np.array(ndimage.center_of_mass(label)) - np.array(ndimage.center_of_mass(truth > 0))
                pred = np.roll(truth, tuple(np.rint(offset * self.follow).astype(int)), axis=(0, 1))
            fg = np.where(pred > 0, self.confidence, 1 - self.confidence).astype(np.float32)
            np.savez_compressed(out / f"{c}.npz", probabilities=np.stack([1 - fg, fg])[:, None])
            save_pickle(props, str(out / f"{c}.pkl"))
            rw.write_seg(pred[None].astype(np.uint8), str(out / f"{c}{fe}"), props)
        return {"fake": True, "method": aux.method}
