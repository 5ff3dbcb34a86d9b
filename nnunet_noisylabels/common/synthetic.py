"""Small synthetic nnU-Net raw datasets: the quick start's built-in default and the test suite's fixtures.

Each case shows bright ellipses (class 1) and, for multi-class datasets, darker discs (class 2) on a noisy
background, so a segmentation network can learn them in a few dozen iterations on a CPU. The labels can be written
clean or with a systematic, planted annotation error (a known noise pattern that phase 1 can learn).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

NOISE_KINDS = ("none", "dilate", "erode", "shift")


def _ellipsoid(shape: tuple[int, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    d = sum(((grid[i] - center[i]) / radii[i]) ** 2 for i in range(len(shape)))
    return d <= 1.0


def synthetic_case(shape: tuple[int, ...], num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic (image, label) pair. image: float32 in [0, 255]; label: uint8 with values 0..num_classes-1."""
    shape = tuple(int(s) for s in shape)
    s = np.asarray(shape, dtype=np.float32)
    seg = np.zeros(shape, dtype=np.uint8)
    c1 = rng.uniform(0.35, 0.5, len(shape)) * s
    seg[_ellipsoid(shape, c1, rng.uniform(0.15, 0.25, len(shape)) * s)] = 1
    if num_classes > 2:
        c2 = np.where(c1 < s / 2, s * 0.75, s * 0.25) + rng.uniform(-0.05, 0.05, len(shape)) * s
        seg[_ellipsoid(shape, c2, np.full(len(shape), rng.uniform(0.1, 0.14)) * s) & (seg == 0)] = 2
    for k in range(3, num_classes):  # further classes: small cubes/squares in a free corner-ish spot
        lo = (rng.uniform(0.05, 0.15, len(shape)) * s).astype(int)
        box = tuple(slice(l, l + max(2, int(0.08 * n))) for l, n in zip(lo, shape))
        seg[box][seg[box] == 0] = k
    intensities = np.array([40.0, 200.0, 120.0] + [160.0] * max(0, num_classes - 3), dtype=np.float32)
    img = intensities[seg] + rng.normal(0, 20, shape).astype(np.float32)
    img = ndimage.gaussian_filter(img, 0.7)
    return np.clip(img, 0, 255).astype(np.float32), seg


def plant_noise(seg: np.ndarray, kind: str, strength: int = 2) -> np.ndarray:
    """Systematic annotation error used by the synthetic datasets (the toolkit in preprocessing has the full set).

    ``dilate``/``erode`` grow/shrink every structure by ``strength`` voxels (over-/under-annotation), ``shift``
    moves the whole label map by ``strength`` voxels along the first axis.
    """
    if kind == "none":
        return seg.copy()
    if kind == "shift":
        return np.roll(seg, strength, axis=0)
    out = np.zeros_like(seg) if kind == "dilate" else seg.copy()
    structure = ndimage.generate_binary_structure(seg.ndim, 1)
    for k in np.unique(seg[seg > 0]):
        m = seg == k
        if kind == "dilate":
            grown = ndimage.binary_dilation(m, structure, iterations=strength)
            out[grown & (out == 0) & ((seg == 0) | m)] = k
        elif kind == "erode":
            out[m & ~ndimage.binary_erosion(m, structure, iterations=strength)] = 0
        else:
            raise ValueError(f"Unknown noise kind {kind!r}; choose one of {NOISE_KINDS}.")
    return out


def _write_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(arr).astype(np.uint8)).save(path)


def _write_nifti(arr: np.ndarray, path: Path, spacing: tuple[float, ...]) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(x) for x in spacing[::-1]))
    sitk.WriteImage(img, str(path))


def write_synthetic_dataset(raw_root: str | Path, dataset_id: int, name: str = "Synthetic", dim: int = 2,
                            num_classes: int = 2, num_cases: int = 12, num_clean: int = 3, num_test: int = 0,
                            shape: tuple[int, ...] | None = None, noise: str = "dilate", noise_strength: int = 2,
                            seed: int = 0) -> Path:
    """Write ``DatasetXXX_Name`` into ``raw_root`` and return its folder.

    Args:
        raw_root: the nnUNet_raw folder.
        dataset_id: nnU-Net dataset id (1..999).
        dim: 2 (PNG, nnU-Net's NaturalImage2DIO) or 3 (NIfTI via SimpleITK).
        num_classes: classes including background (2 = binary).
        num_cases: training cases (imagesTr/labelsTr).
        num_clean: cases that also get their clean label in ``labelsTr_clean/`` (0: no such folder).
        num_test: held-out cases in imagesTs/ with clean labels in labelsTs/.
        shape: image shape; default 64x64 (2D) or 24x32x32 (3D).
        noise: planted error in ``labelsTr/`` (see :func:`plant_noise`); ``"none"`` writes a clean dataset.
        seed: random seed; the same arguments always write the same files.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    if noise not in NOISE_KINDS:
        raise ValueError(f"Unknown noise kind {noise!r}; choose one of {NOISE_KINDS}.")
    shape = tuple(shape) if shape is not None else ((64, 64) if dim == 2 else (24, 32, 32))
    rng = np.random.default_rng(seed)
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    ending = ".png" if dim == 2 else ".nii.gz"
    subdirs = ["imagesTr", "labelsTr"] + (["labelsTr_clean"] if num_clean else []) + (
        ["imagesTs", "labelsTs"] if num_test else [])
    for sub in subdirs:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    spacing = (1.0,) * dim

    def write(arr: np.ndarray, path: Path) -> None:
        _write_png(arr, path) if dim == 2 else _write_nifti(arr, path, spacing)

    for i in range(num_cases + num_test):
        img, seg = synthetic_case(shape, num_classes, rng)
        case = f"case_{i:03d}"
        if i < num_cases:
            write(img, folder / "imagesTr" / f"{case}_0000{ending}")
            write(plant_noise(seg, noise, noise_strength), folder / "labelsTr" / f"{case}{ending}")
            if i < num_clean:
                write(seg, folder / "labelsTr_clean" / f"{case}{ending}")
        else:
            write(img, folder / "imagesTs" / f"{case}_0000{ending}")
            write(seg, folder / "labelsTs" / f"{case}{ending}")
    labels = {"background": 0, **{f"structure{k}": k for k in range(1, num_classes)}}
    dataset_json = {"channel_names": {"0": "synthetic"}, "labels": labels, "numTraining": num_cases,
                    "file_ending": ending, "name": name,
                    "description": f"synthetic {dim}D dataset, labelsTr noise: {noise} {noise_strength}"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder
