"""Inputs of a label revision: the checks run before anything is written (:func:`validate_inputs`), the
preserved originals (``labelsTr_imperfect/``) and the recovery of an interrupted run.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_noisylabels.common import raw_dataset, safe_fs
from nnunet_noisylabels.revision.base import (CLEAN_DIR, LABELS_DIR, MANIFEST_NAME, NOISE_MAPS_DIR, ORIGINALS_DIR,
                                              REPORT_DIR, RevisionError, geometry, num_image_channels, progress_bar,
                                              same_geometry, sha256_file)


@dataclass
class RevisionInputs:
    """Everything the revision needs to know about a raw dataset, checked by :func:`validate_inputs`."""

    raw_folder: Path
    dataset_json: dict
    file_ending: str
    num_classes: int
    num_image_channels: int
    case_ids: list[str]
    clean_ids: list[str]
    revise_ids: list[str]
    originals_folder: Path  # where the imperfect labels are read from
    dimensionality: int  # 2 or 3 (2D datasets are stored as (1, X, Y))

    def imperfect_label(self, case_id: str) -> Path:
        return self.originals_folder / f"{case_id}{self.file_ending}"

    def clean_label(self, case_id: str) -> Path:
        return self.raw_folder / CLEAN_DIR / f"{case_id}{self.file_ending}"

    def images(self, case_id: str) -> list[Path]:
        return raw_dataset.image_files(self.raw_folder, case_id, self.dataset_json, must_exist=False)


def validate_inputs(raw_folder: str | os.PathLike, progress: bool = False) -> RevisionInputs:
    """Check a raw dataset for label revision and list its cases; writes nothing.

    The imperfect labels are read from ``labelsTr_imperfect/`` when a previous revision preserved them there,
    otherwise from ``labelsTr/``.

    Args:
        raw_folder: the nnU-Net raw dataset folder (``.../nnUNet_raw/DatasetXXX_Name``).
        progress: show a progress bar while reading the labels.

    Returns:
        a :class:`RevisionInputs`.

    Raises:
        RevisionError / FileNotFoundError: no dataset.json, no or empty ``labelsTr_clean/``, clean files without a
            matching case, missing image channels, clean and imperfect labels of different shape or geometry,
            label values outside dataset.json, or nothing left to revise.
    """
    raw = Path(raw_folder)
    dataset_json = raw_dataset.load_dataset_json(raw)
    file_ending = dataset_json["file_ending"]
    if "dataset" in dataset_json:
        raise RevisionError("dataset.json lists its files explicitly ('dataset' key); label revision needs the "
                            "standard imagesTr/labelsTr layout.")
    num_classes = raw_dataset.num_classes(dataset_json, allow_ignore=False)
    num_channels = num_image_channels(dataset_json)

    originals = raw / ORIGINALS_DIR if (raw / ORIGINALS_DIR).is_dir() else raw / LABELS_DIR
    imperfect = raw_dataset.label_files(originals, file_ending)
    if not imperfect:
        raise FileNotFoundError(f"No label files ending in '{file_ending}' in {originals}.")
    clean_dir = raw / CLEAN_DIR
    if not clean_dir.is_dir():
        raise FileNotFoundError(
            f"{clean_dir} not found. Put the clean expert labels of a few cases there (same file names as in "
            f"{LABELS_DIR}/); label revision learns the noise pattern from these clean/imperfect pairs.")
    clean = raw_dataset.label_files(clean_dir, file_ending)
    if not clean:
        raise RevisionError(f"{clean_dir} holds no label files ending in '{file_ending}': the clean subset is empty.")
    orphans = sorted(set(clean) - set(imperfect))
    if orphans:
        raise RevisionError(f"{len(orphans)} clean label(s) in {clean_dir} have no matching case in {originals}: "
                            f"{orphans[:10]}. Clean labels must use the file names of existing training cases.")
    missing_images = [p for c in imperfect for p in raw_dataset.image_files(raw, c, dataset_json, must_exist=False)
                      if not p.is_file()]
    if missing_images:
        raise FileNotFoundError(f"{len(missing_images)} image file(s) missing in {raw / 'imagesTr'}, e.g. "
                                f"{missing_images[0].name}; every case needs channels _0000.._{num_channels - 1:04d}.")
    revise_ids = sorted(set(imperfect) - set(clean))
    if not revise_ids:
        raise RevisionError("Every training case has a clean label: there is nothing to revise.")

    if originals.name == ORIGINALS_DIR:
        added = sorted(set(raw_dataset.label_files(raw / LABELS_DIR, file_ending)) - set(imperfect))
        if added:
            raise RevisionError(f"{len(added)} label file(s) in {raw / LABELS_DIR} have no original in "
                                f"{originals} (cases added after the last revision?): {added[:10]}. A re-run "
                                f"revises the labels kept in {ORIGINALS_DIR}/; copy the imperfect labels of the new "
                                f"cases there too (same file names), then run again.")
    dimensionality = None
    for case_id in progress_bar(sorted(imperfect), "Checking images and labels", progress):
        seg, props = raw_dataset.check_case(case_id, raw_dataset.image_files(raw, case_id, dataset_json),
                                            imperfect[case_id], dataset_json, dimensionality)
        dimensionality = dimensionality or raw_dataset.case_dimensionality(props)
        if case_id in clean:
            raw_dataset.check_file_complete(clean[case_id])
            cseg, cprops = raw_dataset.read_label(clean[case_id], dataset_json)
            raw_dataset.check_label_values(cseg, dataset_json, clean[case_id])
            if cseg.shape != seg.shape[1:]:
                raise RevisionError(f"Clean and imperfect labels of case '{case_id}' differ in shape: "
                                    f"{cseg.shape} ({clean[case_id]}) vs {seg.shape[1:]} ({imperfect[case_id]}).")
            if not same_geometry(cprops, props):
                raise RevisionError(f"Clean and imperfect labels of case '{case_id}' differ in geometry: "
                                    f"{geometry(cprops)} vs {geometry(props)}.")
    return RevisionInputs(raw_folder=raw, dataset_json=dataset_json, file_ending=file_ending,
                          num_classes=num_classes, num_image_channels=num_channels, case_ids=sorted(imperfect),
                          clean_ids=sorted(clean), revise_ids=revise_ids, originals_folder=originals,
                          dimensionality=dimensionality or 3)


def recover_interrupted_swap(raw_folder: str | os.PathLike) -> list[str]:
    """Undo the traces of an interrupted run: restore a folder from a pending ``<folder>.old-*`` swap, remove
    temporary ``*.tmp-*`` folders, and finish or drop a manifest that was written for labels about to be swapped in
    (see :func:`finish_pending_manifest`). Returns what was done (for the log)."""
    raw = Path(raw_folder)
    done = []
    for name in (LABELS_DIR, NOISE_MAPS_DIR, ORIGINALS_DIR):
        done += safe_fs.restore_interrupted_swap(raw, name)
    done += finish_pending_manifest(raw)
    return done


def pending_manifest_path(root: Path) -> Path:
    return Path(root) / f".{MANIFEST_NAME}.pending"


def finish_pending_manifest(root: str | os.PathLike) -> list[str]:
    """A run writes its manifest beside the labels as ``.labelsTr_revision.json.pending`` before it swaps the new
    ``labelsTr/`` in, and renames it into place after. If it died in between, the manifest either describes the
    labels now in ``labelsTr/`` (every case file has the hash the manifest recorded: the swap happened; the manifest
    is put in place) or it does not (the swap did not happen; it is removed)."""
    root = Path(root)
    pending = pending_manifest_path(root)
    if not pending.is_file() or pending.is_symlink():
        return []
    try:
        manifest = raw_dataset.load_json(pending)
        fe = raw_dataset.load_dataset_json(root)["file_ending"]
        matches = all((root / LABELS_DIR / f"{c}{fe}").is_file()
                      and sha256_file(root / LABELS_DIR / f"{c}{fe}") == r.get("revised_sha256")
                      for c, r in manifest["cases"].items())
    except (ValueError, KeyError, OSError):
        matches = False
    if matches:
        os.replace(pending, root / MANIFEST_NAME)
        return [f"the revised labels of an interrupted run were in place: wrote its manifest {MANIFEST_NAME}"]
    pending.unlink()
    return [f"removed the manifest of an interrupted run ({pending.name}); its labels were never swapped in"]


def tmp_folder(parent: Path, name: str) -> Path:
    return safe_fs.temp_sibling(parent, name)


def preserve_originals(inputs: RevisionInputs) -> Path:
    """Copy the imperfect labels to ``labelsTr_imperfect/`` unless they are already there; return that folder.

    Once present the folder is never written again, so a re-run starts from the original imperfect labels. The copy
    goes to a temporary folder first and is renamed into place, so a half-written copy never counts as the originals.
    """
    target = inputs.raw_folder / ORIGINALS_DIR
    if target.is_dir():
        return target
    tmp = tmp_folder(inputs.raw_folder, ORIGINALS_DIR)
    try:
        for case_id in inputs.case_ids:
            shutil.copy2(inputs.imperfect_label(case_id), tmp / f"{case_id}{inputs.file_ending}")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    inputs.originals_folder = target
    return target


def resolve_dataset_folder(dataset: str | int | os.PathLike) -> Path:
    """A dataset id, ``DatasetXXX_Name`` (looked up in ``nnUNet_raw``) or a folder path -> the raw dataset folder."""
    return raw_dataset.resolve_raw_dataset(str(dataset)).resolve()


def check_options(consistency_ratio: float, realign_min_gain: float, realign_rounds: int) -> None:
    """Range checks of the numeric options, before anything is read or written."""
    if not (np.isfinite(consistency_ratio) and consistency_ratio > 1):
        raise RevisionError(f"--consistency_ratio must be a number > 1 (how many times larger the revised group's "
                            f"mean change must be than the kept group's), got {consistency_ratio}.")
    if not 0 < realign_min_gain < 1:
        raise RevisionError(f"realign_min_gain must be in (0, 1), got {realign_min_gain}.")
    if realign_rounds < 1:
        raise RevisionError(f"realign_rounds must be at least 1, got {realign_rounds}.")


def check_in_place_layout(raw: Path, save_noise_maps: bool, report: bool) -> None:
    """Refuse an in-place revision that could lose or hide a user's file, before anything is written.

    Rule: the folders and files an in-place run replaces or writes into (``labelsTr/``, ``labelsTr_imperfect/``,
    ``noise_maps/``, the report folder and the manifest) must not be symbolic links, since renames would replace
    the link and the write would not be "fully old or fully new" in the folder it points to; and ``noise_maps/`` or
    the report folder may only be there if an earlier revision of this dataset wrote them.
    """
    safe_fs.refuse_symlinks([raw / n for n in (LABELS_DIR, ORIGINALS_DIR, NOISE_MAPS_DIR, REPORT_DIR, MANIFEST_NAME)],
                            "Revise into a new dataset instead (-o DatasetYYY_Name), or replace the link by the "
                            "folder it points to.")
    if not ((raw / MANIFEST_NAME).is_file() or (raw / ORIGINALS_DIR).is_dir()):
        for name, written, flag in ((NOISE_MAPS_DIR, save_noise_maps, "--no_noise_maps"),
                                    (REPORT_DIR, report, "--no_report")):
            if written and (raw / name).exists():
                raise RevisionError(f"{raw / name} exists, but no earlier revision of this dataset wrote it (there is "
                                    f"no {MANIFEST_NAME}), and this run would replace it. Move it away, pass {flag}, "
                                    f"or revise into a new dataset (-o).")


def revision_sources(raw_folder: str | os.PathLike) -> tuple[Path, Path, Path | None]:
    """(revised labels, imperfect labels, noise maps or None) of a revised dataset, read from its manifest."""
    raw = Path(raw_folder)
    if not (raw / MANIFEST_NAME).is_file():
        raise FileNotFoundError(f"{raw / MANIFEST_NAME} not found: run nnUNetv2_nl_revise on {raw} first.")
    m = raw_dataset.load_json(raw / MANIFEST_NAME)
    nm = m.get("noise_maps_folder")
    return raw / m["labels_folder"], raw / m["originals_folder"], (raw / nm) if nm else None
