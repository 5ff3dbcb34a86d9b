"""Outputs of a revision: the revised ``labelsTr/`` (swapped in atomically), the noise maps, the consistency gate's
decision, and a new output dataset (``-o``).
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from nnunet_noisylabels.common import raw_dataset, safe_fs
from nnunet_noisylabels.revision.auxiliary import used_dataset_ids
from nnunet_noisylabels.revision.band import mark_band
from nnunet_noisylabels.revision.base import (CLEAN_DIR, HARD_DIR, LABELS_DIR, NOISE_MAPS_DIR, NOISE_OVER,
                                              NOISE_SWAP, NOISE_UNDER, ORIGINALS_DIR, RevisionError, link_or_copy,
                                              progress_bar, sha256_file)
from nnunet_noisylabels.revision.consistency import consistent_cases, relative_change
from nnunet_noisylabels.revision.inputs import RevisionInputs, tmp_folder

swap_in_folder = safe_fs.swap_in_folder


def noise_map(imperfect: np.ndarray, revised: np.ndarray) -> np.ndarray:
    """Per-voxel noise code of an imperfect label relative to its revision.

    Args:
        imperfect, revised: integer label maps of equal shape (X, Y[, Z]).

    Returns:
        uint8 map of the same shape: 0 agree, 1 over-annotation (imperfect foreground, revised background),
        2 under-annotation (imperfect background, revised foreground), 3 class swap (both foreground, different).
    """
    if imperfect.shape != revised.shape:
        raise ValueError(f"noise_map: shape mismatch {imperfect.shape} vs {revised.shape}")
    out = np.zeros(imperfect.shape, dtype=np.uint8)
    fi, fr = imperfect != 0, revised != 0
    out[fi & ~fr] = NOISE_OVER
    out[~fi & fr] = NOISE_UNDER
    out[fi & fr & (imperfect != revised)] = NOISE_SWAP
    return out


def noise_statistics(nmap: np.ndarray) -> dict[str, float]:
    """Fractions of all voxels flagged per noise code (``fraction_changed`` = any code > 0)."""
    n = max(nmap.size, 1)
    return {"fraction_changed": float((nmap > 0).sum()) / n,
            "fraction_over": float((nmap == NOISE_OVER).sum()) / n,
            "fraction_under": float((nmap == NOISE_UNDER).sum()) / n,
            "fraction_swap": float((nmap == NOISE_SWAP).sum()) / n}


def consistency_gate(inputs: RevisionInputs, predictions: Path, min_ratio: float = 3.0, progress: bool = False
                     ) -> tuple[dict[str, float], dict]:
    """Scores every revised case by :func:`.consistency.relative_change` and applies
    :func:`.consistency.consistent_cases`. Returns ({kept case id: score}, the gate's record for the manifest)."""
    fe = inputs.file_ending
    rw = raw_dataset.reader_writer(inputs.dataset_json, inputs.imperfect_label(inputs.case_ids[0]))
    scores = {}
    for case_id in progress_bar(inputs.revise_ids, "Consistency of the revisions", progress):
        imp = rw.read_seg(str(inputs.imperfect_label(case_id)))[0]
        rev = rw.read_seg(str(Path(predictions) / f"{case_id}{fe}"))[0]
        if rev.shape != imp.shape:
            raise RuntimeError(f"Revised label of '{case_id}' has shape {rev.shape[1:]}, the imperfect one "
                               f"{imp.shape[1:]}; {LABELS_DIR}/ was left unchanged.")
        scores[case_id] = relative_change(imp, rev)
    kept, info = consistent_cases(scores, min_ratio=min_ratio)
    return {c: scores[c] for c in kept}, info


def write_revised_labels(inputs: RevisionInputs, predictions: Path, target_root: Path, progress: bool = False,
                         save_noise_maps: bool = True, branch_noise_maps: Path | None = None,
                         before_swap: Callable[[dict[str, dict]], None] | None = None,
                         keep_imperfect: Mapping[str, float] | None = None,
                         realigned: Mapping[str, dict] | None = None,
                         band_of: Callable[[str], np.ndarray] | None = None,
                         ignore_label: int | None = None) -> dict[str, dict]:
    """Assemble the revised ``labelsTr`` (and ``noise_maps``) of ``target_root`` and swap them in atomically.

    Clean cases get their clean label; the others get their prediction from ``predictions/``. Everything is
    checked and written into temporary folders first; ``labelsTr`` is replaced only when all cases are done.
    Noise maps: for revised cases the network's branch maps from ``branch_noise_maps`` when given, else the
    difference imperfect vs revised; for clean cases always the difference imperfect vs clean (the true noise).
    Cases in ``keep_imperfect`` (case id -> consistency score, see :mod:`.consistency`) keep their imperfect label.
    Cases in ``realigned`` (case id -> per-class realignment, see :func:`realign_imperfect_inputs`) were predicted
    from a moved label, which the branch maps describe: their noise map is the difference imperfect vs revised.
    ``before_swap(records)`` runs once everything is written, before the swaps (the manifest is written there).
    Entries of the old folders that are not label files of a case (a user's notes, backups, sub folders) are
    carried over into the new ones (:func:`.safe_fs.swap_in_folder`). The noise maps are swapped in first and
    ``labelsTr`` last.
    ``band_of(case_id)``: the uncertain band (bool, the label's shape as nnU-Net reads it) of a predicted case,
    written there with ``ignore_label`` (:mod:`.band`); the hard labels then also go to ``labelsTr_hard/``. Clean
    cases and cases that keep their imperfect label never carry the band.

    Returns:
        per-case records for the manifest.
    """
    target_root = Path(target_root)
    fe = inputs.file_ending
    rw = raw_dataset.reader_writer(inputs.dataset_json, inputs.imperfect_label(inputs.case_ids[0]))
    missing = [c for c in inputs.revise_ids if not (Path(predictions) / f"{c}{fe}").is_file()]
    if missing:
        raise RuntimeError(f"The revision model produced no prediction for {len(missing)} case(s), e.g. {missing[:5]}"
                           f"; {LABELS_DIR}/ was left unchanged.")
    tmp_labels = tmp_folder(target_root, LABELS_DIR)
    tmp_noise = tmp_folder(target_root, NOISE_MAPS_DIR) if save_noise_maps else None
    tmp_hard = tmp_folder(target_root, HARD_DIR) if band_of is not None else None
    if band_of is not None and ignore_label is None:
        raise ValueError("band_of needs the ignore_label to write the band with")
    records: dict[str, dict] = {}
    try:
        for case_id in progress_bar(inputs.case_ids, "Writing revised labels", progress):
            is_clean = case_id in set(inputs.clean_ids)
            kept = not is_clean and keep_imperfect is not None and case_id in keep_imperfect
            src = inputs.clean_label(case_id) if is_clean else inputs.imperfect_label(case_id) if kept \
                else Path(predictions) / f"{case_id}{fe}"
            imp, imp_props = rw.read_seg(str(inputs.imperfect_label(case_id)))
            new, new_props = rw.read_seg(str(src))
            if new.shape != imp.shape:
                raise RuntimeError(f"Revised label of '{case_id}' has shape {new.shape[1:]}, the imperfect one "
                                   f"{imp.shape[1:]}; {LABELS_DIR}/ was left unchanged.")
            raw_dataset.check_label_values(new, inputs.dataset_json, src)
            band_stats = {}
            if tmp_hard is not None:
                shutil.copy2(src, tmp_hard / f"{case_id}{fe}")
            if tmp_hard is not None and not is_clean and not kept:  # a prediction: it carries its band
                band = band_of(case_id)
                rw.write_seg(mark_band(new, band, ignore_label)[0], str(tmp_labels / f"{case_id}{fe}"), new_props)
                band_stats = {"band_voxels": int(band.sum()), "band_fraction": float(band.mean())}
            else:
                shutil.copy2(src, tmp_labels / f"{case_id}{fe}")
            nmap = noise_map(imp[0], new[0])
            stats = noise_statistics(nmap)
            from_branches = branch_noise_maps is not None and not is_clean and case_id not in (realigned or {})
            if from_branches:
                bmap, _ = rw.read_seg(str(Path(branch_noise_maps) / f"{case_id}{fe}"))
                if bmap.shape != imp.shape:
                    raise RuntimeError(f"Branch noise map of '{case_id}' has shape {bmap.shape[1:]}, expected "
                                       f"{imp.shape[1:]}.")
                nmap = bmap[0].astype(np.uint8)
                branch = noise_statistics(nmap)
                stats.update({"branch_fraction_over": branch["fraction_over"] + branch["fraction_swap"],
                              "branch_fraction_under": branch["fraction_under"] + branch["fraction_swap"]})
            if tmp_noise is not None:
                rw.write_seg(nmap, str(tmp_noise / f"{case_id}{fe}"), imp_props)
            records[case_id] = {"source": "clean" if is_clean else "revised",
                                "imperfect_sha256": sha256_file(inputs.imperfect_label(case_id)),
                                "revised_sha256": sha256_file(src), **stats,
                                "noise_map_from": "branches" if from_branches else "difference", **band_stats}
            if realigned and case_id in realigned:
                records[case_id]["realigned"] = realigned[case_id]
            if kept:
                records[case_id].update({"kept_imperfect": True, "consistency_score": keep_imperfect[case_id]})
        if before_swap is not None:
            before_swap(records)
        for tmp, name in ((tmp_noise, NOISE_MAPS_DIR), (tmp_hard, HARD_DIR)):
            if tmp is not None:
                swap_in_folder(tmp, target_root / name)
        swap_in_folder(tmp_labels, target_root / LABELS_DIR)
    except BaseException:
        for tmp in (tmp_labels, tmp_noise, tmp_hard):
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        raise
    return records


def plugin_version() -> str:
    try:
        from importlib.metadata import version

        return version("nnunet-noisylabels")
    except Exception:
        return "unknown"


def nnunet_version() -> str:
    try:
        from importlib.metadata import version

        return version("nnunetv2")
    except Exception:
        return "unknown"


def make_output_dataset(inputs: RevisionInputs, output_dataset: str) -> Path:
    """Create a new raw dataset folder (in a temporary place) with the source's images and label folders."""
    raw_root = os.environ.get("nnUNet_raw")
    out = Path(output_dataset)
    if not out.is_absolute() and os.sep not in output_dataset:
        if not raw_root:
            raise RevisionError("--output_dataset given as a name needs nnUNet_raw to be set (or pass a path).")
        if not re.fullmatch(r"Dataset\d{3}_.+", output_dataset):
            raise RevisionError(f"--output_dataset '{output_dataset}' must look like DatasetXXX_Name.")
        m_id = int(output_dataset[7:10])
        used = used_dataset_ids()
        if m_id in used and used[m_id] != output_dataset:
            raise RevisionError(f"Dataset id {m_id} is already taken by {used[m_id]}; choose another id.")
        out = Path(raw_root) / output_dataset
    if out.exists():
        raise RevisionError(f"{out} already exists; choose a new --output_dataset or delete it first.")
    if out.is_symlink():
        raise RevisionError(f"{out} is a symbolic link; choose a new --output_dataset.")
    if out.resolve() == inputs.raw_folder.resolve():
        raise RevisionError("--output_dataset must differ from the source dataset.")
    if inputs.raw_folder.resolve() in out.resolve().parents:
        raise RevisionError(f"--output_dataset {out} lies inside the source dataset {inputs.raw_folder}; write the "
                            f"new dataset beside it (e.g. a DatasetYYY_Name in nnUNet_raw).")
    return out


def populate_output_dataset(inputs: RevisionInputs, root: Path, progress: bool) -> None:
    """Images (linked), dataset.json, clean and original imperfect labels of a new output dataset."""
    fe = inputs.file_ending
    (root / "imagesTr").mkdir()
    for case_id in progress_bar(inputs.case_ids, "Linking images", progress):
        for c, src in enumerate(inputs.images(case_id)):
            link_or_copy(src, root / "imagesTr" / f"{case_id}_{c:04d}{fe}")
    djson = dict(inputs.dataset_json)
    djson["name"] = root.name.split(".tmp-")[0].lstrip(".")
    raw_dataset.write_json_atomic(djson, root / "dataset.json")
    shutil.copytree(inputs.raw_folder / CLEAN_DIR, root / CLEAN_DIR)
    (root / ORIGINALS_DIR).mkdir()
    for case_id in inputs.case_ids:
        shutil.copy2(inputs.imperfect_label(case_id), root / ORIGINALS_DIR / f"{case_id}{fe}")
