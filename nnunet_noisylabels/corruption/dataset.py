"""Build a noisy-label nnU-Net raw dataset from a clean one (the library behind ``nnUNetv2_nl_corrupt``).

The new dataset ``nnUNet_raw/DatasetXXX_<name>/`` holds

- ``labelsTr/``: the imperfect label of every training case (a fraction ``alpha`` corrupted, the rest clean);
- ``labelsTr_clean/``: the clean label of a seeded clean subset (these cases keep their imperfect label in
  ``labelsTr/`` too);
- ``imagesTr/`` (and ``imagesTs/``, ``labelsTs/`` if present): relative symbolic links to the source files, or
  byte copies with ``copy_images``;
- ``dataset.json``: the source's, renamed, with a ``noisy_labels`` entry pointing at the manifest;
- ``corruption_manifest.json``: per case the noise applied, its sampled parameters and the Dice of the imperfect
  vs the clean label (per class and mean), plus dataset means.

The dataset is written to a hidden temporary folder inside ``nnUNet_raw`` and renamed into place at the end, so an
error never leaves a half-written dataset, and the source dataset is only ever read.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from nnunet_noisylabels.common.metrics import dice
from nnunet_noisylabels.corruption.noise import (BETA_TYPES, NOISE_FUNCTIONS, corrupt_label_map,
                                                         validate_noise_params)
from nnunet_noisylabels.common.raw_dataset import (CLEAN_LABELS_DIR, RawDatasetError, case_dimensionality,
                                                       check_case, image_files, load_dataset_json, load_json,
                                                       make_temp_dir, resolve_raw_dataset, training_case_ids,
                                                       write_json_atomic, write_label_atomic)
from nnunet_noisylabels.common.safe_fs import refuse_symlinks, replace_folder, undo_interrupted_replace

MANIFEST_NAME = "corruption_manifest.json"
CLEAN_LABELS_SUBDIR = CLEAN_LABELS_DIR
# what a dataset written by corrupt_dataset holds; --overwrite replaces a folder only if it holds nothing else
OWN_ENTRIES = frozenset({"imagesTr", "labelsTr", CLEAN_LABELS_SUBDIR, "imagesTs", "labelsTs", "dataset.json",
                         MANIFEST_NAME})


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """Generator of one case: depends only on the global seed and the case id (not on order or process count)."""
    return np.random.default_rng([int(seed), zlib.crc32(case_id.encode("utf-8"))])


def select_cases(case_ids: Sequence[str], seed: int, alpha: float = 1.0, clean_fraction: float | None = None,
                 clean_count: int | None = None) -> tuple[list[str], list[str]]:
    """Pick the corrupted cases (fraction ``alpha``) and the clean subset (count or fraction), both seeded.

    The two draws are independent, so a clean-subset case may also be uncorrupted when ``alpha`` < 1.

    Returns:
        (corrupted case ids, clean-subset case ids), each sorted.
    """
    n = len(case_ids)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha (fraction of corrupted cases) must lie in [0, 1], got {alpha}")
    if clean_fraction is not None and clean_count is not None:
        raise ValueError("give either clean_fraction or clean_count, not both")
    if clean_fraction is not None:
        if not 0.0 <= float(clean_fraction) <= 1.0:
            raise ValueError(f"clean_fraction must lie in [0, 1], got {clean_fraction}")
        clean_count = int(round(float(clean_fraction) * n))
    clean_count = 0 if clean_count is None else int(clean_count)
    if not 0 <= clean_count <= n:
        raise ValueError(f"clean_count must lie in [0, {n}] (the number of training cases), got {clean_count}")
    ids = sorted(case_ids)
    rng_alpha, rng_clean = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))
    n_corrupt = int(round(float(alpha) * n))
    corrupted = sorted(np.asarray(ids)[rng_alpha.permutation(n)[:n_corrupt]].tolist()) if n else []
    clean = sorted(np.asarray(ids)[rng_clean.permutation(n)[:clean_count]].tolist()) if n else []
    return corrupted, clean


def foreground_labels(dataset_json: Mapping[str, Any]) -> list[int]:
    """Integer foreground labels of dataset.json (regions expanded, ignore label excluded)."""
    values: set[int] = set()
    for name, v in dataset_json["labels"].items():
        if name == "ignore":
            continue
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            values.add(int(x))
    return sorted(values - {0})


def _spatial(seg: np.ndarray) -> np.ndarray:
    """Drop singleton axes (the channel axis of nnU-Net's readers, the z axis of 2D images)."""
    core = np.squeeze(seg)
    if core.ndim not in (2, 3):
        raise ValueError(f"label of shape {seg.shape} is neither 2D nor 3D once singleton axes are dropped")
    return core


def _dice_report(clean: np.ndarray, noisy: np.ndarray, labels: Sequence[int]) -> tuple[dict[str, float], float]:
    per = {str(c): round(dice(clean == c, noisy == c), 6) for c in labels}
    present = [str(c) for c in labels if (clean == c).any() or (noisy == c).any()]
    mean = float(np.mean([per[c] for c in present])) if present else 1.0
    return per, round(mean, 6)


def _link_or_copy(src: Path, dst: Path, copy: bool) -> None:
    if not copy:
        try:
            os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst)
            return
        except OSError:  # file systems without symlinks: fall back to a copy
            pass
    shutil.copy2(src, dst)


def _process_case(job: dict) -> dict:
    """Corrupt (or copy) the label of one case; runs in worker processes, so it takes and returns plain data."""
    src, tmp, case, ds_json = Path(job["source"]), Path(job["tmp"]), job["case"], job["dataset_json"]
    ending = ds_json["file_ending"]
    label_path = src / "labelsTr" / f"{case}{ending}"
    images = image_files(src, case, ds_json)
    seg, props = check_case(case, images, label_path, ds_json)
    seg = seg[0]
    labels = job["labels"]
    record: dict[str, Any] = {"corrupted": job["corrupt"], "clean_subset": job["clean"],
                              "dimensionality": case_dimensionality(props)}
    core = _spatial(seg)
    empty = [c for c in labels if not (core == c).any()]
    if empty:
        record["empty_classes"] = empty
    if job["corrupt"]:
        noisy_core, info = corrupt_label_map(core, job["noise"], case_rng(job["seed"], case), labels=labels,
                                             class_params=job["class_params"], **job["params"])
        noisy = noisy_core.reshape(seg.shape).astype(seg.dtype, copy=False)
        write_label_atomic(noisy, tmp / "labelsTr" / f"{case}{ending}", props, ds_json)
        record.update(noise=info["noise"], params=info["params"],
                      sampled={str(c): v.get("sampled") for c, v in info["classes"].items() if not v["empty"]},
                      changed_ratio={str(c): v["changed_ratio"] for c, v in info["classes"].items()
                                     if not v["empty"]})
    else:
        noisy_core = core
        shutil.copy2(label_path, tmp / "labelsTr" / f"{case}{ending}")
        record.update(noise=None)
    if job["clean"]:
        shutil.copy2(label_path, tmp / CLEAN_LABELS_SUBDIR / f"{case}{ending}")
    for img in images:
        _link_or_copy(img, tmp / "imagesTr" / img.name, job["copy_images"])
    record["dice"], record["mean_dice"] = _dice_report(core, noisy_core, labels)
    return {"case": case, **record}


def _check_one_dimensionality(records: Sequence[dict]) -> None:
    """Raise if the cases are not all 2D or all 3D (named: the cases of the smaller group)."""
    by_dim: dict[int, list[str]] = {}
    for r in records:
        by_dim.setdefault(r["dimensionality"], []).append(r["case"])
    if len(by_dim) > 1:
        minority = min(by_dim, key=lambda d: len(by_dim[d]))
        majority = max(by_dim, key=lambda d: len(by_dim[d]))
        raise RawDatasetError(f"cases {by_dim[minority][:10]} are {minority}D, the other cases are {majority}D. A "
                              f"dataset is either 2D or 3D; convert or remove them.")


def _is_own_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by :func:`corrupt_dataset` (its manifest names it) and holds nothing else."""
    try:
        manifest = load_json(folder / MANIFEST_NAME)
        ds_json = load_json(folder / "dataset.json")
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and manifest.get("dataset") == folder.name
            and isinstance(ds_json, dict) and "noisy_labels" in ds_json)


def check_replaceable(folder: Path) -> None:
    """Raise unless ``folder`` may be replaced by ``--overwrite``: a real folder this toolkit wrote, holding only
    what it wrote (a revision by ``nnUNetv2_nl_revise``, a user's notes or an expert label folder make it a
    dataset of the user's)."""
    refuse_symlinks([folder], "Remove the link or choose another target id; --overwrite does not follow links.")
    if not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder; move it away or choose another target id")
    if not _is_own_dataset(folder):
        raise FileExistsError(f"{folder} was not written by nnUNetv2_nl_corrupt (no {MANIFEST_NAME} naming it), "
                              f"so --overwrite will not replace it; move it away or choose another target id")
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in OWN_ENTRIES)
    if foreign:
        raise FileExistsError(f"{folder} holds {', '.join(foreign[:8])}{' ...' if len(foreign) > 8 else ''}, "
                              f"which nnUNetv2_nl_corrupt did not write (e.g. a revision or your own files), so "
                              f"--overwrite will not replace it; move them away or choose another target id")


def target_folder(target_id: int, name: str, overwrite: bool) -> Path:
    """Folder of the new dataset; refuses ids used by another dataset, existing targets without overwrite and, with
    it, targets this toolkit did not write (:func:`check_replaceable`). What an interrupted run for this target
    left is cleaned up first (:func:`remove_stale_temp_folders`)."""
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise RawDatasetError("nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw")
    if not 0 < int(target_id) <= 999:
        raise ValueError(f"target dataset id must lie in 1..999, got {target_id}")
    if not name or any(ch in name for ch in "/\\ ") or name.startswith("."):
        raise ValueError(f"invalid dataset name {name!r}: use letters, digits, '-' or '_'")
    full = f"Dataset{int(target_id):03d}_{name}"
    others = [c for c in find_candidate_datasets(int(target_id)) if c != full]
    if others:
        raise FileExistsError(f"dataset id {target_id} is already used by {', '.join(others)} (nnUNet_raw, "
                              f"nnUNet_preprocessed or nnUNet_results); choose another target id")
    folder = Path(raw) / full
    if folder.parent.is_dir():
        remove_stale_temp_folders(folder)
    if folder.exists() or folder.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{folder} exists; pass --overwrite to replace it or choose another target id")
        check_replaceable(folder)
    return folder


def _checked_noise_params(noise: str, params: Mapping[str, Any] | None,
                          class_params: Mapping[int, Mapping[str, Any]] | None) -> tuple[dict, dict[int, dict]]:
    """Validate the noise parameters and the per-label overrides; returns them as (plain) dicts with int labels."""
    params = dict(params or {})
    validate_noise_params(noise, params)
    class_params = {int(k): dict(v) for k, v in (class_params or {}).items()}
    if noise in NOISE_FUNCTIONS:  # composite types are checked per case, once the type is drawn
        for over in class_params.values():
            validate_noise_params(noise, {**params, **over})
    return params, class_params


def _checked_labels(src: Path, ds_json: Mapping[str, Any], labels: Sequence[int] | None,
                    class_params: Mapping[int, Any]) -> list[int]:
    """The sorted labels to corrupt (default: every foreground label of dataset.json); each must be a foreground
    label, and ``class_params`` may only name corrupted labels."""
    all_fg = foreground_labels(ds_json)
    if labels is None:
        labels = all_fg
    bad = sorted(set(int(c) for c in labels) - set(all_fg))
    if bad:
        raise ValueError(f"labels {bad} are not foreground labels of {src.name} (dataset.json has {all_fg})")
    labels = sorted(int(c) for c in labels)
    if set(class_params) - set(labels):
        raise ValueError(f"class_params given for labels {sorted(set(class_params) - set(labels))} that are not "
                         f"corrupted (corrupted labels: {labels})")
    return labels


def corrupt_dataset(source: str | int, target_id: int, noise: str, params: Mapping[str, Any] | None = None,
                    name: str | None = None, alpha: float = 1.0, clean_fraction: float | None = None,
                    clean_count: int | None = None, seed: int = 0, copy_images: bool = False,
                    num_processes: int = 1, overwrite: bool = False, labels: Sequence[int] | None = None,
                    class_params: Mapping[int, Mapping[str, Any]] | None = None, pbar: bool = True) -> Path:
    """Write a new raw dataset with corrupted training labels, a clean subset and a manifest.

    Args:
        source: dataset id or name in ``nnUNet_raw`` (never modified).
        target_id: id of the new dataset.
        noise: a type of :mod:`~nnunet_noisylabels.corruption.noise` (incl. 'mixture', 'alpha_beta').
        params: parameters of the noise (see :func:`~nnunet_noisylabels.corruption.noise.corrupt_label_map`).
        name: name of the new dataset (default ``<source name>_<noise>``).
        alpha: fraction of training cases that get corrupted (seeded); the others keep their clean label.
        clean_fraction / clean_count: size of the clean subset copied to ``labelsTr_clean/`` (seeded).
        seed: global seed; each case's noise depends only on (seed, case id).
        copy_images: copy images instead of linking them.
        num_processes: worker processes.
        overwrite: replace an existing target dataset of the same id and name.
        labels: foreground labels to corrupt (default: all of dataset.json).
        class_params: per-label parameter overrides, e.g. ``{3: {'T': 100}}``.
        pbar: show a tqdm progress bar.
    Returns:
        The folder of the new dataset.
    """
    params, class_params = _checked_noise_params(noise, params, class_params)
    src = resolve_raw_dataset(source)
    ds_json = load_dataset_json(src)
    labels = _checked_labels(src, ds_json, labels, class_params)
    cases = training_case_ids(src, ds_json)
    if not cases:
        raise RawDatasetError(f"{src / 'labelsTr'} holds no training labels")
    corrupted, clean = select_cases(cases, seed, alpha, clean_fraction, clean_count)
    src_name = src.name.split("_", 1)[1] if "_" in src.name else src.name
    out = target_folder(target_id, name or f"{src_name}_{noise}", overwrite)
    if out.resolve() == src.resolve():
        raise ValueError("the target dataset is the source dataset; choose another target id or name")

    tmp = make_temp_dir(out.parent, f".tmp_{out.name}_")
    try:
        for sub in ("imagesTr", "labelsTr", CLEAN_LABELS_SUBDIR):
            (tmp / sub).mkdir()
        corrupted_set, clean_set = set(corrupted), set(clean)
        jobs = [dict(source=str(src), tmp=str(tmp), case=c, dataset_json=ds_json, labels=labels, noise=noise,
                     params=params, class_params=class_params, seed=seed, corrupt=c in corrupted_set,
                     clean=c in clean_set,
                     copy_images=copy_images) for c in cases]
        records = _run_jobs(jobs, num_processes, pbar)
        _check_one_dimensionality(records)
        for sub in ("imagesTs", "labelsTs"):
            if (src / sub).is_dir():
                (tmp / sub).mkdir()
                for f in sorted((src / sub).iterdir()):
                    _link_or_copy(f, tmp / sub / f.name, copy_images or sub == "labelsTs")
        manifest = _manifest(src, out, noise, params, alpha, clean, corrupted, seed, labels, records)
        if class_params:
            manifest["class_params"] = {str(k): v for k, v in class_params.items()}
        write_json_atomic(manifest, tmp / MANIFEST_NAME)
        new_json = dict(ds_json)
        new_json["name"] = out.name
        new_json["noisy_labels"] = {"source_dataset": src.name, "noise": noise, "manifest": MANIFEST_NAME,
                                    "clean_labels": CLEAN_LABELS_SUBDIR, "num_clean": len(clean)}
        write_json_atomic(new_json, tmp / "dataset.json", indent=4)
        # an existing out (checked by check_replaceable) goes aside under the name remove_stale_temp_folders knows
        replace_folder(tmp, out, out.parent / f".old_{out.name}_{uuid.uuid4().hex[:8]}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _run_jobs(jobs: list[dict], num_processes: int, pbar: bool) -> list[dict]:
    from tqdm import tqdm

    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if num_processes == 1 or len(jobs) == 1:
        return [_process_case(j) for j in tqdm(jobs, disable=not pbar, desc="corrupting")]
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
        return list(tqdm(pool.imap(_process_case, jobs), total=len(jobs), disable=not pbar, desc="corrupting"))


def _stale_folders(out: Path) -> list[Path]:
    """Temporary folders an interrupted run for ``out`` left beside it (our naming scheme, real folders only)."""
    pattern = re.compile(rf"\.(tmp_{re.escape(out.name)}_[a-z0-9_]{{8}}|old_{re.escape(out.name)}_[0-9a-f]{{8}})")
    return sorted(p for p in out.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def remove_stale_temp_folders(out: Path) -> list[str]:
    """Remove what an interrupted run for ``out`` left (a half-written dataset, or the old one being replaced).

    If the run died between the two renames of :func:`.safe_fs.replace_folder`, ``out`` is missing and its old version
    sits in ``.old_<name>_*``: it is put back first, so a re-run with ``--overwrite`` finds it as before. (The dotted
    names keep nnU-Net's ``Dataset<id>_*`` lookup from seeing the temporary folders.)
    """
    stale = _stale_folders(out)
    olds = [p for p in stale if p.name.startswith(".old_")]
    return undo_interrupted_replace(out, olds, [p for p in stale if p not in olds])


def _manifest(src: Path, out: Path, noise: str, params: Mapping[str, Any], alpha: float, clean: list[str],
              corrupted: list[str], seed: int, labels: Sequence[int], records: list[dict]) -> dict:
    def mean(xs: list[float]) -> float | None:
        return round(float(np.mean(xs)), 6) if xs else None

    corrupted_recs = [r for r in records if r["corrupted"]]
    per_class = {str(c): mean([r["dice"][str(c)] for r in corrupted_recs]) for c in labels}
    beta = params.get("beta")
    summary = {
        "num_cases": len(records), "num_corrupted": len(corrupted_recs), "num_clean_subset": len(clean),
        "mean_dice": mean([r["mean_dice"] for r in records]),
        "mean_dice_corrupted": mean([r["mean_dice"] for r in corrupted_recs]),
        "mean_dice_corrupted_per_class": per_class,
        "num_cases_with_empty_classes": sum(1 for r in records if r.get("empty_classes")),
    }
    if beta is not None and (noise in BETA_TYPES or noise == "alpha_beta"):
        ratios = [v for r in corrupted_recs for v in r.get("changed_ratio", {}).values()]
        summary["mean_changed_ratio"] = mean(ratios)
    return {
        "source_dataset": src.name, "dataset": out.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "noise": noise, "params": params, "alpha": alpha, "seed": seed, "labels": list(labels),
        "clean_subset": clean, "corrupted_cases": corrupted, "summary": summary,
        "cases": {r["case"]: {k: v for k, v in r.items() if k != "case"} for r in records},
    }
