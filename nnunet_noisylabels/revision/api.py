"""Label revision as a preprocessing stage: turn imperfect labels into pseudo masks with a noise identification net.

The pipeline (each step is a separate function so it can be tested on its own):

1. :func:`validate_inputs` reads the raw dataset and checks everything before anything is written.
2. :func:`preserve_originals` keeps the imperfect labels in ``labelsTr_imperfect/`` (never overwritten once there;
   a re-run reads its inputs from there).
3. :func:`build_aux_dataset` writes the auxiliary nnU-Net dataset: image channels plus the imperfect label as K-1
   binary ``noNorm`` channels (``method='nin'``) or the image channels only (``method='clean_only'``); the clean
   pairs go to ``imagesTr``/``labelsTr``, the cases to revise to ``imagesTs``.
4. a model step (:class:`NnUNetModelStep`: nnU-Net plan + preprocess + train, then predict) writes one label file
   per case to revise.
5. :func:`write_revised_labels` assembles the new label folder (clean label for clean cases, prediction for the
   others) plus per-case noise maps in temporary folders and swaps them in with renames.
6. a provenance manifest ``labelsTr_revision.json`` records what was revised and how.

``method='clean_only'`` is the baseline that every benchmark must carry (nnU-Net trained on the clean pairs alone,
predicting the rest) through the same code path. ``method='ensemble'`` trains both models and revises with the mean
of their softmax probabilities (:func:`average_member_predictions`, nnU-Net's own ensembling): the network that reads
the imperfect label and the one that reads the image alone make different errors, so their mean is better than
either member (BENCHMARKS.md, section 5f), at twice the training cost of phase 1 (spent on one model instead, a
longer training can do as well).

The idea of learning the annotators' noise pattern from a few clean/imperfect pairs and revising every imperfect
label with it comes from Huang et al., "Toward high-quality pseudo masks from noisy or weak annotations for robust
medical image segmentation", Neural Networks 181 (2024) 106850.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from nnunet_noisylabels.revision.aux_dataset import (
    aux_dataset_json_keys,
    imperfect_label_to_channels,
    label_channel_names,
)
from nnunet_noisylabels.common.metrics import dice
from nnunet_noisylabels.revision.consistency import consistent_cases, relative_change
from nnunet_noisylabels.common import raw_dataset, safe_fs
from nnunet_noisylabels.common.raw_dataset import RawDatasetError

LABELS_DIR = "labelsTr"
CLEAN_DIR = "labelsTr_clean"
ORIGINALS_DIR = "labelsTr_imperfect"
NOISE_MAPS_DIR = "noise_maps"
MANIFEST_NAME = "labelsTr_revision.json"
REPORT_DIR = "labelsTr_revision_report"
METHODS = ("nin", "clean_only", "ensemble")
MEMBERS = {"nin": ("nin",), "clean_only": ("clean_only",), "ensemble": ("nin", "clean_only")}
DEFAULT_TRAINERS = {"nin": "NoiseIdentificationTrainer", "clean_only": "nnUNetTrainer"}
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
AUX_SUFFIX = {"nin": "NIN", "clean_only": "NLclean"}
AUX_ID_RANGE = range(500, 1000)
# --method ensemble warns when its members' labels agree less than this (mean Dice per class). On JSRT at 64 px they
# agree at 0.95-0.97 on the lung (lung-only map), 0.92 / 0.88 on lung / heart of the 3-class map, and 0.57 on the
# clavicles, which plain nnU-Net did not learn from the 15 clean pairs (there the mean is worse than the network alone)
ENSEMBLE_AGREEMENT_WARN = 0.8

# Noise-map codes (one label map per case). "over": the imperfect label marks a structure that is not there;
# "under": it misses one; a class swap between two structures is both (over for one class, under for the other).
NOISE_NONE, NOISE_OVER, NOISE_UNDER, NOISE_SWAP = 0, 1, 2, 3
NOISE_MAP_LABELS = {"none": NOISE_NONE, "over_annotation": NOISE_OVER, "under_annotation": NOISE_UNDER,
                    "over_and_under": NOISE_SWAP}
BRANCH_NOISE_DIR = "noise_branches"
REALIGN_DIR = "realigned"  # in the auxiliary dataset: inputs and second-pass predictions of realigned cases


class RevisionError(RawDatasetError):
    """Bad input to the label revision: the message says what is wrong and how to fix it."""


class RevisionReportError(RuntimeError):
    """The revised labels are written (and complete), but the revision report could not be: the message says how to
    write it again."""


# ----------------------------------------------------------------------------------------------------------------
# small helpers (reading/writing goes through utilities.raw_dataset)
# ----------------------------------------------------------------------------------------------------------------
def _num_image_channels(dataset_json: dict) -> int:
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not names:
        raise RevisionError("dataset.json has no 'channel_names'.")
    return len(names)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    # Hard links keep the auxiliary dataset cheap; nnU-Net never writes into raw images. The source is resolved
    # first: a hard link to a relative symlink (images of a corrupted copy point to the clean dataset's) would
    # point elsewhere from a folder at another depth.
    src = Path(src).resolve()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _progress(iterable: Iterable, desc: str, enabled: bool, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total)


def _geometry(props: dict) -> dict:
    """The comparable part of nnU-Net reader properties (spacing and, for SimpleITK files, origin/direction)."""
    out = {"spacing": tuple(float(s) for s in props.get("spacing", ()))}
    sitk = props.get("sitk_stuff")
    if sitk:
        out["origin"] = tuple(float(s) for s in sitk.get("origin", ()))
        out["direction"] = tuple(float(s) for s in sitk.get("direction", ()))
    return out


def _same_geometry(a: dict, b: dict) -> bool:
    ga, gb = _geometry(a), _geometry(b)
    return all(k not in gb or np.allclose(ga[k], gb[k], atol=1e-4) for k in ga if len(ga[k]) == len(gb.get(k, ())))


# ----------------------------------------------------------------------------------------------------------------
# 1. validation
# ----------------------------------------------------------------------------------------------------------------
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
    num_channels = _num_image_channels(dataset_json)

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
    for case_id in _progress(sorted(imperfect), "Checking images and labels", progress):
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
            if not _same_geometry(cprops, props):
                raise RevisionError(f"Clean and imperfect labels of case '{case_id}' differ in geometry: "
                                    f"{_geometry(cprops)} vs {_geometry(props)}.")
    return RevisionInputs(raw_folder=raw, dataset_json=dataset_json, file_ending=file_ending,
                          num_classes=num_classes, num_image_channels=num_channels, case_ids=sorted(imperfect),
                          clean_ids=sorted(clean), revise_ids=revise_ids, originals_folder=originals,
                          dimensionality=dimensionality or 3)


# ----------------------------------------------------------------------------------------------------------------
# 2. preservation of the originals and atomic folder swaps
# ----------------------------------------------------------------------------------------------------------------
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


def _pending_manifest(root: Path) -> Path:
    return Path(root) / f".{MANIFEST_NAME}.pending"


def finish_pending_manifest(root: str | os.PathLike) -> list[str]:
    """A run writes its manifest beside the labels as ``.labelsTr_revision.json.pending`` before it swaps the new
    ``labelsTr/`` in, and renames it into place after. If it died in between, the manifest either describes the
    labels now in ``labelsTr/`` (every case file has the hash the manifest recorded: the swap happened; the manifest
    is put in place) or it does not (the swap did not happen; it is removed)."""
    root = Path(root)
    pending = _pending_manifest(root)
    if not pending.is_file() or pending.is_symlink():
        return []
    try:
        manifest = raw_dataset.load_json(pending)
        fe = raw_dataset.load_dataset_json(root)["file_ending"]
        matches = all((root / LABELS_DIR / f"{c}{fe}").is_file()
                      and _sha256(root / LABELS_DIR / f"{c}{fe}") == r.get("revised_sha256")
                      for c, r in manifest["cases"].items())
    except (ValueError, KeyError, OSError):
        matches = False
    if matches:
        os.replace(pending, root / MANIFEST_NAME)
        return [f"the revised labels of an interrupted run were in place: wrote its manifest {MANIFEST_NAME}"]
    pending.unlink()
    return [f"removed the manifest of an interrupted run ({pending.name}); its labels were never swapped in"]


swap_in_folder = safe_fs.swap_in_folder


def _tmp_folder(parent: Path, name: str) -> Path:
    return safe_fs.temp_sibling(parent, name)


def preserve_originals(inputs: RevisionInputs) -> Path:
    """Copy the imperfect labels to ``labelsTr_imperfect/`` unless they are already there; return that folder.

    Once present the folder is never written again, so a re-run starts from the original imperfect labels. The copy
    goes to a temporary folder first and is renamed into place, so a half-written copy never counts as the originals.
    """
    target = inputs.raw_folder / ORIGINALS_DIR
    if target.is_dir():
        return target
    tmp = _tmp_folder(inputs.raw_folder, ORIGINALS_DIR)
    try:
        for case_id in inputs.case_ids:
            shutil.copy2(inputs.imperfect_label(case_id), tmp / f"{case_id}{inputs.file_ending}")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    inputs.originals_folder = target
    return target


# ----------------------------------------------------------------------------------------------------------------
# 3. auxiliary dataset
# ----------------------------------------------------------------------------------------------------------------
def _dataset_folders(root: str | None) -> dict[int, str]:
    out = {}
    if root and os.path.isdir(root):
        for name in os.listdir(root):
            m = re.fullmatch(r"Dataset(\d{3})_(.+)", name)
            if m:
                out.setdefault(int(m.group(1)), name)
    return out


def _used_dataset_ids() -> dict[int, str]:
    used: dict[int, str] = {}
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        for k, v in _dataset_folders(os.environ.get(var)).items():
            used.setdefault(k, v)
    return used


def source_dataset_name(raw_folder: Path) -> str:
    m = re.fullmatch(r"Dataset\d{3}_(.+)", Path(raw_folder).name)
    return m.group(1) if m else Path(raw_folder).name


def aux_dataset_owners(dataset_name: str) -> set[str]:
    """The source datasets that the folders of ``dataset_name`` in nnUNet_raw, nnUNet_preprocessed and
    nnUNet_results say they were built from (``nl_source_dataset`` in their dataset.json; empty when none says)."""
    owners: set[str] = set()
    files = []
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        if os.environ.get(var):
            files.append(Path(os.environ[var]) / dataset_name / "dataset.json")
    if os.environ.get("nnUNet_results"):
        files += sorted((Path(os.environ["nnUNet_results"]) / dataset_name).glob("*/dataset.json"))
    for f in files:
        try:
            owner = raw_dataset.load_json(f).get("nl_source_dataset") if f.is_file() else None
        except (ValueError, OSError):
            owner = None
        if owner:
            owners.add(owner)
    return owners


def choose_aux_dataset_name(raw_folder: Path, method: str, aux_id: int | None = None) -> str:
    """``DatasetXXX_<source name><NIN|NLclean>``: the given id, the id of an earlier auxiliary dataset built from
    this very source dataset (so re-runs do not pile up datasets), or the first id in 500..999 that nnU-Net's
    folders do not use.

    An auxiliary dataset belongs to the source it was built from (``nl_source_dataset`` in its dataset.json): two
    sources with the same name part (``Dataset270_Twin``, ``Dataset271_Twin``) get different ids, and an id whose
    folders were built from another source, or say nothing of their source, is never reused.
    """
    name = source_dataset_name(raw_folder) + AUX_SUFFIX[method]
    source = Path(raw_folder).name
    used = _used_dataset_ids()
    if aux_id is not None:
        if not 1 <= int(aux_id) <= 999:
            raise RevisionError(f"--aux_id must be in 1..999, got {aux_id}.")
        full = f"Dataset{int(aux_id):03d}_{name}"
        if int(aux_id) in used and used[int(aux_id)] != full:
            raise RevisionError(f"Dataset id {aux_id} is already taken by {used[int(aux_id)]}; choose another --aux_id.")
        if int(aux_id) in used and aux_dataset_owners(full) != {source}:
            owners = aux_dataset_owners(full)
            raise RevisionError(f"Dataset id {aux_id} ({full}) was built from {', '.join(sorted(owners))}, not from "
                                f"{source}; choose another --aux_id." if owners else
                                f"Dataset id {aux_id} ({full}) exists and does not say which dataset it was built "
                                f"from (no 'nl_source_dataset' in its dataset.json), so it is not replaced; choose "
                                f"another --aux_id.")
        return full
    for k, v in sorted(used.items()):
        if v == f"Dataset{k:03d}_{name}" and aux_dataset_owners(v) == {source}:
            return v
    for k in AUX_ID_RANGE:
        if k not in used:
            return f"Dataset{k:03d}_{name}"
    raise RevisionError("No free dataset id in 500..999; pass --aux_id.")


@dataclass
class AuxDataset:
    """An auxiliary nnU-Net raw dataset built by :func:`build_aux_dataset`."""

    folder: Path
    method: str
    dataset_json: dict
    train_ids: list[str]
    predict_ids: list[str]

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def images_ts(self) -> Path:
        return self.folder / "imagesTs"


def _write_case_inputs(inputs: RevisionInputs, rw, case_id: str, folder: Path, label: np.ndarray | None) -> None:
    """One case's input files of an auxiliary dataset: its image channels (linked) and, when ``label`` (nnU-Net's
    label layout without the channel axis) is given, the label one-hot encoded as the K-1 channels after them."""
    fe, C = inputs.file_ending, inputs.num_image_channels
    images = inputs.images(case_id)
    for c, src in enumerate(images):
        _link_or_copy(src, folder / f"{case_id}_{c:04d}{fe}")
    if label is not None:
        _, img_props = rw.read_images([str(p) for p in images])
        for k, mask in enumerate(imperfect_label_to_channels(label, inputs.num_classes), start=1):
            rw.write_seg(mask, str(folder / f"{case_id}_{C + k - 1:04d}{fe}"), img_props)


def check_aux_folder_replaceable(aux: Path, source: str) -> None:
    """Raise unless ``aux`` is absent or an auxiliary dataset built from ``source`` (the only folder a run may
    delete to build it again)."""
    aux = Path(aux)
    safe_fs.refuse_symlinks([aux], "Pass --aux_id with a free dataset id.")
    if not aux.exists():
        return
    try:
        owner = raw_dataset.load_json(aux / "dataset.json").get("nl_source_dataset")
    except (ValueError, OSError):
        owner = None
    if owner != source:
        raise RevisionError(f"{aux} exists and is not an auxiliary dataset built from {source} ("
                            + (f"it was built from {owner}" if owner else "its dataset.json does not say so")
                            + "); it is left alone. Pass --aux_id with a free dataset id.")


def aux_dataset_json(inputs: RevisionInputs, method: str, name: str) -> dict:
    """The dataset.json of the auxiliary dataset ``name`` of ``method`` (see :func:`build_aux_dataset`)."""
    src_json, K = inputs.dataset_json, inputs.num_classes
    channel_names = src_json.get("channel_names", src_json.get("modality"))
    djson = {
        "channel_names": label_channel_names(channel_names, K) if method == "nin"
        else {str(i): n for i, n in enumerate(channel_names.values() if isinstance(channel_names, dict)
                                               else channel_names)},
        "labels": src_json["labels"],
        "numTraining": len(inputs.clean_ids),
        "file_ending": inputs.file_ending,
        "name": name,
        "description": f"Auxiliary dataset of {inputs.raw_folder.name} for label revision (method '{method}'): "
                       f"trained on the clean pairs, predicts the imperfect-only cases in imagesTs.",
        "nl_source_dataset": inputs.raw_folder.name,
        "nl_revision_method": method,
    }
    if method == "nin":
        djson.update(aux_dataset_json_keys(inputs.num_image_channels, K))
    if "overwrite_image_reader_writer" in src_json:
        djson["overwrite_image_reader_writer"] = src_json["overwrite_image_reader_writer"]
    return djson


def build_aux_dataset(inputs: RevisionInputs, aux_folder: str | os.PathLike, method: str = "nin",
                      progress: bool = False) -> AuxDataset:
    """Write the auxiliary dataset the revision model trains and predicts on (replacing an older one of the same
    source there; see :func:`check_aux_folder_replaceable`).

    Layout (see :mod:`nnunet_noisylabels.revision.aux_dataset`): ``imagesTr``/``labelsTr`` = the clean pairs
    (input: image channels, plus for ``method='nin'`` the imperfect label as K-1 binary ``noNorm`` channels; target:
    the clean label), ``imagesTs`` = the cases to revise in the same channel layout. Its dataset.json, which says
    which source it belongs to, is written first, so that a half-built folder is still known as ours.
    """
    if method not in AUX_SUFFIX:
        raise RevisionError(f"Unknown auxiliary dataset method '{method}'; choose one of {tuple(AUX_SUFFIX)}.")
    aux = Path(aux_folder)
    if aux.exists() or aux.is_symlink():
        check_aux_folder_replaceable(aux, inputs.raw_folder.name)
        shutil.rmtree(aux)
    aux.mkdir(parents=True)
    djson = aux_dataset_json(inputs, method, aux.name)
    raw_dataset.write_json_atomic(djson, aux / "dataset.json")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (aux / sub).mkdir()
    fe = inputs.file_ending
    rw = raw_dataset.reader_writer(inputs.dataset_json, inputs.imperfect_label(inputs.case_ids[0]))
    jobs = [(c, "imagesTr") for c in inputs.clean_ids] + [(c, "imagesTs") for c in inputs.revise_ids]
    for case_id, sub in _progress(jobs, "Building auxiliary dataset", progress):
        seg = rw.read_seg(str(inputs.imperfect_label(case_id)))[0][0] if method == "nin" else None
        _write_case_inputs(inputs, rw, case_id, aux / sub, seg)
        if sub == "imagesTr":
            shutil.copy2(inputs.clean_label(case_id), aux / "labelsTr" / f"{case_id}{fe}")
    return AuxDataset(folder=aux, method=method, dataset_json=djson, train_ids=list(inputs.clean_ids),
                      predict_ids=list(inputs.revise_ids))


# ----------------------------------------------------------------------------------------------------------------
# 4. model step: nnU-Net plan / preprocess / train / predict
# ----------------------------------------------------------------------------------------------------------------
ModelStep = Callable[[AuxDataset, Path], dict]
"""Trains (or loads) a model on an :class:`AuxDataset` and writes one label file per ``predict_ids`` case into the
given folder; returns provenance information for the manifest."""


def ensure_plugin_trainers_visible() -> None:
    """Add the plugin's trainer folder to ``nnUNet_extTrainer`` so nnU-Net finds our trainers by name."""
    from nnunet_noisylabels._autoenv import ext_trainer_dir

    folder = ext_trainer_dir()
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if folder not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(current + [folder])


@dataclass
class NnUNetModelStep:
    """The revision model trained and applied through nnU-Net's own Python API.

    Args:
        configuration: nnU-Net configuration ('2d' or '3d_fullres'); ``None`` = by the dataset's dimensionality.
        trainer: trainer class name (``-tr``).
        fold: 'all' (default: few clean pairs) or a fold index.
        plans_identifier: plans name (``-p``).
        device: 'cuda', 'cpu' or 'mps'.
        num_processes: worker processes for fingerprinting/preprocessing and prediction (0/1 = sequential).
        model_folder: a trained model folder (``.../Trainer__Plans__config``) to reuse instead of training.
        checkpoint: checkpoint file name used for prediction.
        progress: nnU-Net's progress bars.
        use_mirroring: nnU-Net's test-time mirroring when predicting (off: 4x (2D) to 8x (3D) faster on CPU).
        save_probabilities: also write nnU-Net's ``.npz`` probabilities and ``.pkl`` properties per case (needed
            by :func:`average_member_predictions`).
    """

    configuration: str | None = None
    trainer: str = DEFAULT_TRAINERS["nin"]
    fold: str = "all"
    plans_identifier: str = "nnUNetPlans"
    device: str = "cuda"
    num_processes: int = 1
    model_folder: str | None = None
    checkpoint: str = DEFAULT_CHECKPOINT
    progress: bool = True
    dimensionality: int = 3
    save_noise_maps: bool = True
    use_mirroring: bool = True
    save_probabilities: bool = False

    def _config(self) -> str:
        return self.configuration or ("2d" if self.dimensionality == 2 else "3d_fullres")

    def train(self, aux: AuxDataset) -> Path:
        """Plan, preprocess and train on the auxiliary dataset; returns the model folder."""
        import torch
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprint_dataset, plan_experiment_dataset, preprocess_dataset)
        from nnunetv2.run.run_training import get_trainer_from_args
        from nnunetv2.utilities.file_path_utilities import get_output_folder

        ensure_plugin_trainers_visible()
        aux_id = int(aux.name[len("Dataset"):len("Dataset") + 3])
        np_ = max(1, int(self.num_processes))
        extract_fingerprint_dataset(aux_id, num_processes=np_, check_dataset_integrity=True, clean=True,
                                    verbose=False, show_progress_bar=self.progress)
        with _planning_thread_env():
            _, plans_identifier = plan_experiment_dataset(aux_id)
        if plans_identifier != self.plans_identifier:
            raise RevisionError(f"Planner wrote plans '{plans_identifier}', expected '{self.plans_identifier}'.")
        preprocess_dataset(aux_id, plans_identifier, [self._config()], [np_], verbose=False,
                           show_progress_bar=self.progress)
        fold = self.fold if self.fold == "all" else int(self.fold)
        trainer = get_trainer_from_args(str(aux_id), self._config(), fold, self.trainer, plans_identifier,
                                        device=torch.device(self.device))
        # No final validation: with fold 'all' it would only re-predict the training cases.
        trainer.run_training()
        del trainer
        return Path(get_output_folder(aux_id, self.trainer, plans_identifier, self._config()))

    def predictor(self, model_folder: Path):
        """An ``nnUNetPredictor`` loaded from ``model_folder`` (fold and checkpoint of this step)."""
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        ensure_plugin_trainers_visible()
        predictor = nnUNetPredictor(device=torch.device(self.device), use_mirroring=self.use_mirroring,
                                    allow_tqdm=self.progress, verbose=False)
        predictor.initialize_from_trained_model_folder(str(model_folder), (self.fold,), self.checkpoint)
        return predictor

    def predict(self, predictor, input_folder: Path, output_folder: Path) -> None:
        if self.num_processes <= 1:
            predictor.predict_from_files_sequential(str(input_folder), str(output_folder), self.save_probabilities,
                                                    True)
        else:
            predictor.predict_from_files(str(input_folder), str(output_folder), self.save_probabilities, True,
                                         self.num_processes, self.num_processes)

    def predict_branch_noise_maps(self, predictor, aux: AuxDataset) -> Path | None:
        """Noise maps from the network's over/under-annotation branches (``eval_output='branches'``), in one pass.

        Both branches are run together through nnU-Net's predictor as a 4-class segmentation whose classes are the
        noise-map codes (see :func:`_branches_as_noise_code`), so sliding window, mirroring and resampling back to the
        original geometry are nnU-Net's own. Returns the folder of per-case maps (codes as :data:`NOISE_MAP_LABELS`),
        or None for networks without branches. ``predictor`` is left as it was given.
        """
        network, label_manager, dataset_json = predictor.network, predictor.label_manager, predictor.dataset_json
        if not hasattr(network, "eval_output"):
            return None
        root = aux.folder / BRANCH_NOISE_DIR
        if root.exists():
            shutil.rmtree(root)
        (root / "combined").mkdir(parents=True)
        # the exporter builds its label manager from the dataset.json: present the noise codes as the classes
        codes = {("background" if v == NOISE_NONE else k): v for k, v in NOISE_MAP_LABELS.items()}
        predictor.dataset_json = {**dataset_json, "labels": codes}
        predictor.label_manager = predictor.plans_manager.get_label_manager(predictor.dataset_json)
        predictor.network = _branches_as_noise_code(network, label_manager.num_segmentation_heads)
        try:
            predictor.predict_from_files_sequential(str(aux.images_ts), str(root / "combined"), False, True)
        finally:
            predictor.network, predictor.label_manager, predictor.dataset_json = network, label_manager, dataset_json
        return root / "combined"

    def __call__(self, aux: AuxDataset, output_folder: Path) -> dict:
        if self.model_folder is not None:
            model = Path(self.model_folder)
            check_reusable_model(model, aux.dataset_json, self.fold, self.checkpoint)
            trained = False
        else:
            model = self.train(aux)
            trained = True
        predictor = self.predictor(model)  # one checkpoint load for the revisions and the noise maps
        self.predict(predictor, aux.images_ts, output_folder)
        branch_maps = self.predict_branch_noise_maps(predictor, aux) if self.save_noise_maps else None
        ckpt = model / f"fold_{self.fold}" / self.checkpoint
        return {"model_folder": str(model), "trained_here": trained, "fold": self.fold,
                "branch_noise_maps": str(branch_maps) if branch_maps is not None else None,
                "checkpoint": self.checkpoint, "checkpoint_sha256": _sha256(ckpt) if ckpt.is_file() else None,
                "trainer": _load_checkpoint_trainer_name(ckpt) or self.trainer, "configuration": self._config(),
                "plans_identifier": self.plans_identifier, "device": self.device, "use_mirroring": self.use_mirroring}


def _branches_as_noise_code_class():
    import torch
    from torch import nn

    class BranchesAsNoiseCode(nn.Module):
        """Presents the over/under branches of a noise identification network to nnU-Net's predictor as 4-class
        logits, one class per noise-map code (none, over, under, both = class swap).

        A voxel is flagged by a branch where the branch's largest foreground logit ``o`` is positive (sigmoid > 0.5).
        The class logits are the joint log-probabilities of the two independent flags, e.g. ``log s(o) + log s(-u)``
        for "over only". Since ``log s(o) - log s(-o) = o``, averaging over windows and mirrors and linear resampling
        of these logits, followed by argmax, flags exactly where the averaged or resampled ``o`` is positive: the same
        decision as predicting each branch alone, in one network pass.
        """

        def __init__(self, network: nn.Module, num_classes: int):
            super().__init__()
            self.network, self.num_classes = network, num_classes

        def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
            return self.network.load_state_dict(state_dict, strict=strict, assign=assign)

        def forward(self, x):
            previous = self.network.eval_output
            self.network.eval_output = "branches"
            try:
                out = self.network(x)
            finally:
                self.network.eval_output = previous
            if isinstance(out, (list, tuple)):
                out = out[0]
            K = self.num_classes
            o = out[:, K + 1:2 * K].amax(dim=1, keepdim=True).float()
            u = out[:, 2 * K + 1:3 * K].amax(dim=1, keepdim=True).float()
            lo1, lo0 = nn.functional.logsigmoid(o), nn.functional.logsigmoid(-o)
            lu1, lu0 = nn.functional.logsigmoid(u), nn.functional.logsigmoid(-u)
            codes = {NOISE_NONE: lo0 + lu0, NOISE_OVER: lo1 + lu0, NOISE_UNDER: lo0 + lu1, NOISE_SWAP: lo1 + lu1}
            return torch.cat([codes[c] for c in sorted(codes)], dim=1).to(out.dtype)

    return BranchesAsNoiseCode


def _branches_as_noise_code(network, num_classes: int):
    return _branches_as_noise_code_class()(network, num_classes)


@contextlib.contextmanager
def _planning_thread_env():
    """nnU-Net's planner calls ``torch.set_num_threads(nnUNet_n_proc_DA)``, which fails for the value 0 that CPU
    users set to keep data augmentation in-process; plan with 1 in that case."""
    old = os.environ.get("nnUNet_n_proc_DA")
    if old is not None and old.strip() == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        yield
    finally:
        if old is not None:
            os.environ["nnUNet_n_proc_DA"] = old


def _load_checkpoint_trainer_name(ckpt: Path) -> str | None:
    if not ckpt.is_file():
        return None
    import torch

    try:
        return torch.load(ckpt, map_location="cpu", weights_only=False).get("trainer_name")
    except Exception:  # provenance only; prediction already read the checkpoint
        return None


def check_reusable_model(model_folder: Path, aux_json: dict, fold: str, checkpoint: str) -> None:
    """Check that a trained model folder fits an auxiliary dataset (its dataset.json: channels, labels, method)."""
    model_folder = Path(model_folder)
    method = aux_json["nl_revision_method"]
    for f in ("dataset.json", "plans.json", f"fold_{fold}/{checkpoint}"):
        if not (model_folder / f).is_file():
            raise FileNotFoundError(f"{model_folder / f} not found: --model must be a trained nnU-Net model folder "
                                    f"(.../Trainer__Plans__configuration) with fold '{fold}'.")
    mj = raw_dataset.load_json(model_folder / "dataset.json")
    if len(mj.get("channel_names", {})) != len(aux_json["channel_names"]) or mj.get("labels") != aux_json["labels"]:
        raise RevisionError(
            f"The model in {model_folder} was trained with {len(mj.get('channel_names', {}))} input channels and "
            f"labels {mj.get('labels')}, but this dataset needs {len(aux_json['channel_names'])} channels and labels "
            f"{aux_json['labels']} (method '{method}').")
    if mj.get("nl_revision_method", method) != method:
        raise RevisionError(f"The model in {model_folder} was trained for method '{mj['nl_revision_method']}', "
                            f"not '{method}'.")


def realign_imperfect_inputs(inputs: RevisionInputs, aux: AuxDataset, predictions: Path, min_gain: float = 0.05,
                             progress: bool = False, case_ids: Iterable[str] | None = None
                             ) -> tuple[AuxDataset | None, dict[str, dict]]:
    """Rigidly realign misplaced imperfect labels onto the latest predictions, as inputs for another pass.

    For each case to revise (or each of ``case_ids``), every class of the imperfect label is moved onto the class's
    prediction when that raises their Dice by at least ``min_gain`` (see :mod:`.realign`). The cases with a moved
    class get their image channels and the realigned label as the network's input channels in
    ``<aux>/realigned/imagesTs``.

    Returns:
        ``(auxiliary dataset of the realigned cases or None if none moved, {case: {class: realignment info}})`` for
        the moved cases.
    """
    from nnunet_noisylabels.revision.realign import realign_label_map

    fe, K = inputs.file_ending, inputs.num_classes
    rw = raw_dataset.reader_writer(inputs.dataset_json, inputs.imperfect_label(inputs.case_ids[0]))
    folder = aux.folder / REALIGN_DIR
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "imagesTs").mkdir(parents=True)
    moved: dict[str, dict] = {}
    for case_id in _progress(list(inputs.revise_ids if case_ids is None else case_ids), "Realigning misplaced labels",
                             progress):
        seg, props = rw.read_seg(str(inputs.imperfect_label(case_id)))
        pred, _ = rw.read_seg(str(Path(predictions) / f"{case_id}{fe}"))
        imp, spacing = raw_dataset.spatial_view(seg, props["spacing"])
        new, info = realign_label_map(imp, raw_dataset.spatial_view(pred, props["spacing"])[0], range(1, K), spacing,
                                      min_gain)
        if not any(v["moved"] for v in info.values()):
            continue
        moved[case_id] = {c: v for c, v in info.items() if v["moved"]}
        _write_case_inputs(inputs, rw, case_id, folder / "imagesTs", new.reshape(seg.shape[1:]))
    if not moved:
        shutil.rmtree(folder)
        return None, moved
    return AuxDataset(folder=folder, method=aux.method, dataset_json=aux.dataset_json, train_ids=aux.train_ids,
                      predict_ids=sorted(moved)), moved


def second_pass_step(step: ModelStep, first_pass_info: dict) -> ModelStep:
    """The model step of a second prediction pass: nnU-Net's step reuses the model the first pass trained."""
    if isinstance(step, NnUNetModelStep):
        return replace(step, model_folder=first_pass_info["model_folder"], save_noise_maps=False)
    return step


def _realign_and_repredict(inputs: RevisionInputs, aux: AuxDataset, step: ModelStep, first_pass_info: dict,
                           min_gain: float, rounds: int, progress: bool, log: Callable[[str], None],
                           reference: Path | None = None, refresh: Callable[[list[str]], object] | None = None
                           ) -> dict[str, dict]:
    """Realign misplaced labels onto the latest predictions and predict those cases again, ``rounds`` times; the
    new predictions (with their ``.npz``/``.pkl`` when present) replace the earlier ones in ``predictionsTs``.

    The network follows a misplaced label part of the way, so its prediction lies between the label and the
    structure; each round moves the (original) label onto the latest prediction, closer to the structure, and the
    next prediction closer still. A round considers only the cases moved in the round before.

    ``reference``: the folder of the predictions the labels move onto (default: the network's ``predictionsTs``);
    ``refresh(case_ids)`` brings it up to date after the network predicted those cases again (the ensemble: the
    members' average, which the clean-only member, blind to the label, draws towards the image).
    """
    predictions = aux.folder / "predictionsTs"
    reference = predictions if reference is None else reference
    moved: dict[str, dict] = {}
    candidates = None
    fe = inputs.file_ending
    for r in range(1, rounds + 1):
        sub, now = realign_imperfect_inputs(inputs, aux, reference, min_gain, progress, candidates)
        considered = len(inputs.revise_ids if candidates is None else candidates)
        log(f"Realignment, round {r}/{rounds}: {len(now)} of {considered} case(s) have a misplaced label"
            + (", predicting them again from the realigned label" if now else ""))
        if sub is None:
            break
        out = sub.folder / "predictionsTs"
        out.mkdir()
        second_pass_step(step, first_pass_info)(sub, out)
        missing = [c for c in sub.predict_ids if not (out / f"{c}{fe}").is_file()]
        if missing:
            raise RuntimeError(f"The second pass produced no prediction for {len(missing)} realigned case(s), e.g. "
                               f"{missing[:5]}; labelsTr/ was left unchanged.")
        for c in sub.predict_ids:
            for f in (f"{c}{fe}", f"{c}.npz", f"{c}.pkl"):
                if (out / f).is_file():
                    shutil.copy2(out / f, predictions / f)
            moved[c] = {"rounds": r, "classes": now[c]}
        if refresh is not None:
            refresh(sub.predict_ids)
        candidates = sub.predict_ids
    return moved


# ----------------------------------------------------------------------------------------------------------------
# 5. revised labels, noise maps
# ----------------------------------------------------------------------------------------------------------------
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


def average_member_predictions(inputs: RevisionInputs, member_folders: list[Path], output_folder: Path,
                               progress: bool = False, case_ids: Iterable[str] | None = None,
                               keep_probabilities: bool = False) -> dict[str, float | None]:
    """The ensemble revision: per case to revise, the mean of the members' softmax probabilities, argmax, written to
    ``output_folder`` in the label geometry (nnU-Net's ``ensembling.merge_files``, as ``nnUNetv2_ensemble``).

    Every member folder must hold ``<case>.npz`` (nnU-Net's ``probabilities``, in the original geometry) and
    ``<case>.pkl`` (the image properties) for every case, as ``nnUNetPredictor`` writes with
    ``save_probabilities``, plus its own label file. Each member's ``.npz`` is deleted once merged (large for 3D
    data; ``keep_probabilities``: kept, for another merge); its label file stays. ``case_ids``: only these cases
    (default: every case to revise).

    Returns:
        per foreground class name, the mean over cases of the Dice between the first two members' own labels
        (None where neither has the class in any case): where it is low, one member cannot segment that class and
        the mean is worth less than the better member alone.
    """
    from nnunetv2.ensembling.ensemble import merge_files
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    fe = inputs.file_ending
    rw = raw_dataset.reader_writer(inputs.dataset_json, inputs.imperfect_label(inputs.case_ids[0]))
    labels = LabelManager(inputs.dataset_json["labels"], inputs.dataset_json.get("regions_class_order"))
    output_folder.mkdir(parents=True, exist_ok=True)
    classes = {name: int(k) for name, k in inputs.dataset_json["labels"].items() if int(k) != 0}
    agreement: dict[str, list[float]] = {name: [] for name in classes}
    case_ids = list(inputs.revise_ids if case_ids is None else case_ids)
    for case_id in _progress(case_ids, "Averaging the revision models", progress):
        files = [Path(f) / f"{case_id}.npz" for f in member_folders]
        missing = [str(f) for f in files if not f.is_file() or not f.with_suffix(".pkl").is_file()]
        if missing:
            raise RuntimeError(f"Probabilities of '{case_id}' missing ({', '.join(missing)}); {LABELS_DIR}/ was left "
                               "unchanged.")
        merge_files([str(f) for f in files], str(output_folder / case_id), fe, rw, labels)
        a, b = (rw.read_seg(str(Path(f) / f"{case_id}{fe}"))[0] for f in member_folders[:2])
        for name, k in classes.items():
            if (a == k).any() or (b == k).any():
                agreement[name].append(dice(a == k, b == k))
    if not keep_probabilities:
        for case_id in case_ids:
            for f in member_folders:
                (Path(f) / f"{case_id}.npz").unlink(missing_ok=True)
    return {name: (float(np.mean(v)) if v else None) for name, v in agreement.items()}


def consistency_gate(inputs: RevisionInputs, predictions: Path, min_ratio: float = 3.0, progress: bool = False
                     ) -> tuple[dict[str, float], dict]:
    """Scores every revised case by :func:`.consistency.relative_change` and applies
    :func:`.consistency.consistent_cases`. Returns ({kept case id: score}, the gate's record for the manifest)."""
    fe = inputs.file_ending
    rw = raw_dataset.reader_writer(inputs.dataset_json, inputs.imperfect_label(inputs.case_ids[0]))
    scores = {}
    for case_id in _progress(inputs.revise_ids, "Consistency of the revisions", progress):
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
                         realigned: Mapping[str, dict] | None = None) -> dict[str, dict]:
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
    tmp_labels = _tmp_folder(target_root, LABELS_DIR)
    tmp_noise = _tmp_folder(target_root, NOISE_MAPS_DIR) if save_noise_maps else None
    records: dict[str, dict] = {}
    try:
        for case_id in _progress(inputs.case_ids, "Writing revised labels", progress):
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
                                "imperfect_sha256": _sha256(inputs.imperfect_label(case_id)),
                                "revised_sha256": _sha256(src), **stats,
                                "noise_map_from": "branches" if from_branches else "difference"}
            if realigned and case_id in realigned:
                records[case_id]["realigned"] = realigned[case_id]
            if kept:
                records[case_id].update({"kept_imperfect": True, "consistency_score": keep_imperfect[case_id]})
        if before_swap is not None:
            before_swap(records)
        if tmp_noise is not None:
            swap_in_folder(tmp_noise, target_root / NOISE_MAPS_DIR)
        swap_in_folder(tmp_labels, target_root / LABELS_DIR)
    except BaseException:
        shutil.rmtree(tmp_labels, ignore_errors=True)
        if tmp_noise is not None:
            shutil.rmtree(tmp_noise, ignore_errors=True)
        raise
    return records


# ----------------------------------------------------------------------------------------------------------------
# 6. the whole job
# ----------------------------------------------------------------------------------------------------------------
def resolve_dataset_folder(dataset: str | int | os.PathLike) -> Path:
    """A dataset id, ``DatasetXXX_Name`` (looked up in ``nnUNet_raw``) or a folder path -> the raw dataset folder."""
    return raw_dataset.resolve_raw_dataset(str(dataset)).resolve()


def _plugin_version() -> str:
    try:
        from importlib.metadata import version

        return version("nnunet-noisylabels")
    except Exception:
        return "unknown"


def _nnunet_version() -> str:
    try:
        from importlib.metadata import version

        return version("nnunetv2")
    except Exception:
        return "unknown"


def _make_output_dataset(inputs: RevisionInputs, output_dataset: str) -> Path:
    """Create a new raw dataset folder (in a temporary place) with the source's images and label folders."""
    raw_root = os.environ.get("nnUNet_raw")
    out = Path(output_dataset)
    if not out.is_absolute() and os.sep not in output_dataset:
        if not raw_root:
            raise RevisionError("--output_dataset given as a name needs nnUNet_raw to be set (or pass a path).")
        if not re.fullmatch(r"Dataset\d{3}_.+", output_dataset):
            raise RevisionError(f"--output_dataset '{output_dataset}' must look like DatasetXXX_Name.")
        m_id = int(output_dataset[7:10])
        used = _used_dataset_ids()
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


def check_model_choice(inputs: RevisionInputs, method: str, configuration: str | None, trainer: str,
                       model_folder: str | None, fold: str, checkpoint: str = DEFAULT_CHECKPOINT) -> None:
    """Check what nnU-Net's model step will need (configuration, trainer class, a reused model folder) before
    anything is written, instead of after minutes of planning and training."""
    configurations = ("2d",) if inputs.dimensionality == 2 else ("2d", "3d_fullres", "3d_lowres")
    if configuration is not None and configuration not in configurations:
        raise RevisionError(f"Configuration '{configuration}' (-c) is not one nnU-Net plans for this "
                            f"{inputs.dimensionality}D dataset; choose one of {configurations}.")
    if model_folder is not None:
        check_reusable_model(Path(model_folder), aux_dataset_json(inputs, method, "check"), fold, checkpoint)
        return
    import io

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    ensure_plugin_trainers_visible()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            recursive_find_trainer_class_by_name(trainer)
    except (RuntimeError, AssertionError, ImportError):
        raise RevisionError(f"Unknown trainer '{trainer}' (-tr / --clean_only_tr): it is neither one of nnU-Net's "
                            f"trainers nor one of this plugin's (nnUNetv2_nl_env lists those), nor in a folder of "
                            f"nnUNet_extTrainer. Check the spelling.") from None


def revise_dataset(dataset: str | int | os.PathLike, method: str = "nin", output_dataset: str | None = None,
                   model_step: ModelStep | Mapping[str, ModelStep] | None = None, aux_id: int | None = None,
                   aux_folder: str | None = None, trainer: str | None = None, configuration: str | None = None,
                   fold: str = "all", device: str | None = None, num_processes: int = 1,
                   model_folder: str | None = None, clean_only_trainer: str | None = None,
                   clean_only_model_folder: str | None = None,
                   save_noise_maps: bool = True, truth_folder: str | None = None, report: bool = True,
                   keep_aux: bool = True, keep_consistent: bool = True, consistency_ratio: float = 3.0,
                   use_mirroring: bool = True, realign: bool = False, realign_min_gain: float = 0.05,
                   realign_rounds: int = 3,
                   progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Revise the imperfect labels of a raw nnU-Net dataset with a model trained on its clean pairs.

    In place (default): the imperfect labels are preserved in ``labelsTr_imperfect/``, ``labelsTr/`` is replaced
    atomically by the pseudo masks (clean cases get their clean label), noise maps go to ``noise_maps/`` and the
    manifest to ``labelsTr_revision.json``. With ``output_dataset`` the source is left untouched and a new raw dataset
    (images linked, ``labelsTr_clean``/``labelsTr_imperfect`` copied) is written instead.

    Args:
        dataset: dataset id, name or folder.
        method: 'nin' (noise identification network: image + imperfect label in), 'clean_only' (plain nnU-Net on
            the image channels of the clean pairs; the benchmark baseline) or 'ensemble' (both, softmax averaged).
        output_dataset: write a new dataset (``DatasetXXX_Name`` in nnUNet_raw, or a path) instead of in place.
        model_step: replaces the nnU-Net train/predict step (tests); default :class:`NnUNetModelStep`. For
            'ensemble' a mapping member method -> step, whose steps must also write nnU-Net's ``.npz``/``.pkl``.
        aux_id: dataset id of the auxiliary dataset (default: free id chosen automatically); with 'ensemble' the
            noise identification network's, the clean-only one takes the next free id.
        aux_folder: build the auxiliary dataset here instead of in nnUNet_raw (only with a custom model_step or
            ``model_folder``, since nnU-Net training needs it in nnUNet_raw); with 'ensemble' one sub-folder per
            member.
        trainer, configuration, fold, device, num_processes, model_folder: see :class:`NnUNetModelStep`; with
            'ensemble', ``trainer``/``model_folder`` are the noise identification network's.
        clean_only_trainer, clean_only_model_folder: trainer / trained model of the clean-only member of 'ensemble'
            (``trainer``/``model_folder`` serve for ``method='clean_only'`` alone).
        save_noise_maps: write per-case noise maps.
        truth_folder: true labels (e.g. of the clean dataset a corrupted copy came from) for the report's Dice/HD95.
        report: write the revision report (JSON, CSV, Markdown, PNG overlays).
        keep_aux: keep the auxiliary dataset after the run (it holds the trained model's inputs).
        keep_consistent: keep the imperfect label of the cases the model agrees with (case-level gate, see
            :mod:`nnunet_noisylabels.revision.consistency`); it acts only when such a group stands apart.
        consistency_ratio: the gate's ``min_ratio``.
        use_mirroring: test-time mirroring of the revision model's predictions (nnU-Net's default: on).
        realign: misplaced labels (method 'nin', and the network of 'ensemble'): move each class of the imperfect
            label rigidly onto the revision's first prediction (the network's; for 'ensemble' the members' average)
            where that raises their Dice by ``realign_min_gain``, and let the network predict those cases again from
            the realigned label (see :mod:`.realign`).
        realign_min_gain: see ``realign``.
        realign_rounds: realign-and-predict rounds (each one moves the label onto the latest prediction; a round
            costs one prediction of the realigned cases).
        progress: progress bars.
        log: where progress messages go.

    Returns:
        the manifest (also written to ``labelsTr_revision.json``).
    """
    if method not in METHODS:
        raise RevisionError(f"Unknown method '{method}'; choose one of {METHODS}.")
    raw = resolve_dataset_folder(dataset)
    check_options(consistency_ratio, realign_min_gain, realign_rounds)
    if output_dataset is None:
        check_in_place_layout(raw, save_noise_maps, report)
        for line in recover_interrupted_swap(raw):
            log(f"Recovered from an interrupted run: {line}")
    inputs = validate_inputs(raw, progress=progress)
    log(f"{raw.name}: {len(inputs.clean_ids)} clean pair(s), {len(inputs.revise_ids)} case(s) to revise, "
        f"{inputs.num_classes} classes, {inputs.dimensionality}D; imperfect labels read from "
        f"{inputs.originals_folder.name}/")
    out_final = _make_output_dataset(inputs, output_dataset) if output_dataset is not None else None
    if truth_folder is not None and not Path(truth_folder).is_dir():
        raise FileNotFoundError(f"--truth folder {truth_folder} not found.")

    if str(fold) != "all" and len(inputs.clean_ids) < 5:
        raise RevisionError(f"Fold {fold} needs nnU-Net's 5-fold split of the clean pairs, but there are only "
                            f"{len(inputs.clean_ids)}; use -f all.")
    members = MEMBERS[method]
    ensemble = len(members) > 1
    if realign and "nin" not in members:
        raise RevisionError("--realign moves the imperfect label that the noise identification network reads; "
                            "method 'clean_only' does not read it. Use --method nin or ensemble.")
    if model_step is None:
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        chosen = {"nin": (trainer, model_folder), "clean_only": (trainer, model_folder)}
        if ensemble:
            chosen["clean_only"] = (clean_only_trainer, clean_only_model_folder)
        for m in members:  # found now, not after minutes of planning and training
            check_model_choice(inputs, m, configuration, chosen[m][0] or DEFAULT_TRAINERS[m], chosen[m][1], str(fold))
        model_step = {m: NnUNetModelStep(configuration=configuration, trainer=chosen[m][0] or DEFAULT_TRAINERS[m],
                                         fold=str(fold), device=device, num_processes=num_processes,
                                         model_folder=chosen[m][1], progress=progress,
                                         dimensionality=inputs.dimensionality, save_noise_maps=save_noise_maps,
                                         use_mirroring=use_mirroring, save_probabilities=ensemble)
                      for m in members}
    elif not isinstance(model_step, Mapping):
        model_step = {m: model_step for m in members}
    if set(model_step) != set(members):
        raise RevisionError(f"model_step must give a step for each of {members}, got {sorted(model_step)}.")
    if aux_folder is not None:
        aux_folders = {m: Path(aux_folder) / AUX_SUFFIX[m] if ensemble else Path(aux_folder) for m in members}
    else:
        if not os.environ.get("nnUNet_raw"):
            raise RevisionError("nnUNet_raw is not set: the auxiliary dataset is built there.")
        # the first name now (a bad --aux_id stops here, before anything is written); an ensemble's second one once
        # the first folder exists, so that the two never get the same free id
        aux_folders = {members[0]: Path(os.environ["nnUNet_raw"]) / choose_aux_dataset_name(raw, members[0], aux_id)}

    if out_final is None:
        preserve_originals(inputs)
        target_root = raw
    else:
        out_final.parent.mkdir(parents=True, exist_ok=True)
        for stale in safe_fs.stale_siblings(out_final.parent, f".{out_final.name}", "tmp"):
            shutil.rmtree(stale)
            log(f"Removed {stale}, left by an interrupted run")
        target_root = safe_fs.temp_sibling(out_final.parent, f".{out_final.name}")
    auxes, infos, realigned = {}, {}, {}
    try:
        for m in members:
            if m not in aux_folders:
                aux_folders[m] = Path(os.environ["nnUNet_raw"]) / choose_aux_dataset_name(raw, m)
            auxes[m] = build_aux_dataset(inputs, aux_folders[m], m, progress=progress)
            log(f"Auxiliary dataset: {auxes[m].folder}")
            (auxes[m].folder / "predictionsTs").mkdir()
            infos[m] = model_step[m](auxes[m], auxes[m].folder / "predictionsTs") or {}
            if realign and m == "nin" and not ensemble:
                realigned = _realign_and_repredict(inputs, auxes[m], model_step[m], infos[m], realign_min_gain,
                                                   realign_rounds, progress, log)
        aux = auxes[members[0]]
        if ensemble:
            pred_dir = aux.folder / "predictionsTs_ensemble"
            folders = [auxes[m].folder / "predictionsTs" for m in members]
            if realign:
                # the labels move onto the ensemble's own prediction; the moved cases are averaged again each round
                average_member_predictions(inputs, folders, pred_dir, progress, keep_probabilities=True)
                realigned = _realign_and_repredict(
                    inputs, auxes["nin"], model_step["nin"], infos["nin"], realign_min_gain, realign_rounds, progress,
                    log, reference=pred_dir, refresh=lambda ids: average_member_predictions(
                        inputs, folders, pred_dir, case_ids=ids, keep_probabilities=True))
            agreement = average_member_predictions(inputs, folders, pred_dir, progress)
            model_info = {"members": infos, "fusion": "mean of the members' softmax probabilities, argmax",
                          "member_agreement_dice": agreement}
            low = {k: round(v, 3) for k, v in agreement.items() if v is not None and v < ENSEMBLE_AGREEMENT_WARN}
            if low:
                log(f"Warning: the two revision models disagree on {low} (mean Dice between them < "
                    f"{ENSEMBLE_AGREEMENT_WARN}); one of them cannot segment these classes from the clean pairs "
                    f"and their mean may be worse than --method nin alone. Compare the two before training on it.")
        else:
            pred_dir = aux.folder / "predictionsTs"
            model_info = infos[members[0]]
        branch_maps = infos.get("nin", {}).get("branch_noise_maps")  # only the network has over/under branches
        if out_final is not None:
            _populate_output_dataset(inputs, target_root, progress)
        keep, gate = {}, {"applied": False, "reason": "disabled (--no_keep_consistent)"}
        if keep_consistent:
            keep, gate = consistency_gate(inputs, pred_dir, consistency_ratio, progress)
            log(f"Consistency gate: {gate['num_kept']} case(s) keep their imperfect label"
                + ("" if gate["applied"] else f" ({gate.get('reason')})"))
        manifest = {
            "format": "nnunet_noisylabels.revision/1",
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source_dataset": raw.name,
            "mode": "in_place" if out_final is None else "new_dataset",
            "dataset": (out_final or raw).name,
            "method": method,
            "aux_dataset": aux.name if not ensemble else [auxes[m].name for m in members],
            "model": model_info,
            "labels_folder": LABELS_DIR,
            "originals_folder": ORIGINALS_DIR,
            "clean_folder": CLEAN_DIR,
            "noise_maps_folder": NOISE_MAPS_DIR if save_noise_maps else None,
            "noise_map_codes": NOISE_MAP_LABELS,
            "noise_maps_from": "network over/under branches (revised cases), difference imperfect vs clean (clean "
                               "cases)" if branch_maps else "difference imperfect vs revised/clean",
            "num_clean": len(inputs.clean_ids),
            "num_revised": len(inputs.revise_ids),
            "consistency_gate": gate,
            "realignment": {"enabled": realign, "min_gain": realign_min_gain, "rounds": realign_rounds,
                            "num_cases": len(realigned)}
            if realign else {"enabled": False},
            "versions": {"nnunet_noisylabels": _plugin_version(), "nnunetv2": _nnunet_version()},
        }

        def write_pending_manifest(records: dict[str, dict]) -> None:
            # written before the labels are swapped in, renamed into place after (see finish_pending_manifest)
            manifest["cases"] = records
            raw_dataset.write_json_atomic(manifest, _pending_manifest(target_root))

        write_revised_labels(inputs, pred_dir, target_root, progress=progress, save_noise_maps=save_noise_maps,
                             branch_noise_maps=Path(branch_maps) if branch_maps else None,
                             before_swap=write_pending_manifest, keep_imperfect=keep, realigned=realigned)
        os.replace(_pending_manifest(target_root), target_root / MANIFEST_NAME)
        if out_final is not None:
            os.rename(target_root, out_final)
            target_root = out_final
    except BaseException:
        if out_final is not None:
            shutil.rmtree(target_root, ignore_errors=True)
        else:
            finish_pending_manifest(target_root)
        raise
    finally:
        if not keep_aux:  # only what this run built: a folder it refused to replace is not ours
            for folder in (a.folder for a in auxes.values()):
                shutil.rmtree(folder, ignore_errors=True)
    log(f"Revised {len(inputs.revise_ids)} label(s) in {target_root / LABELS_DIR}; originals in "
        f"{target_root / ORIGINALS_DIR}; manifest {target_root / MANIFEST_NAME}.")
    if report:
        from nnunet_noisylabels.revision.report import write_revision_report

        try:
            summary = write_revision_report(target_root, truth_folder=truth_folder, progress=progress)
        except Exception as e:
            again = f"nnUNetv2_nl_revise -d {target_root} --report_only" + (
                f" --truth {truth_folder}" if truth_folder is not None else "")
            raise RevisionReportError(
                f"The labels were revised ({target_root / LABELS_DIR}, manifest {target_root / MANIFEST_NAME}), but "
                f"the report failed ({type(e).__name__}: {e}). Write it again with: {again}") from e
        log(f"Report: {target_root / REPORT_DIR}" + (
            f" (mean Dice imperfect {summary['mean']['dice_imperfect']:.4f} -> revised "
            f"{summary['mean']['dice_revised']:.4f})" if summary.get("mean", {}).get("dice_revised") is not None
            else ""))
    log("Next: nnUNetv2_plan_and_preprocess / nnUNetv2_train on this dataset use the pseudo masks "
        "(re-run preprocessing if the dataset was preprocessed before).")
    return manifest


def _populate_output_dataset(inputs: RevisionInputs, root: Path, progress: bool) -> None:
    """Images (linked), dataset.json, clean and original imperfect labels of a new output dataset."""
    fe = inputs.file_ending
    (root / "imagesTr").mkdir()
    for case_id in _progress(inputs.case_ids, "Linking images", progress):
        for c, src in enumerate(inputs.images(case_id)):
            _link_or_copy(src, root / "imagesTr" / f"{case_id}_{c:04d}{fe}")
    djson = dict(inputs.dataset_json)
    djson["name"] = root.name.split(".tmp-")[0].lstrip(".")
    raw_dataset.write_json_atomic(djson, root / "dataset.json")
    shutil.copytree(inputs.raw_folder / CLEAN_DIR, root / CLEAN_DIR)
    (root / ORIGINALS_DIR).mkdir()
    for case_id in inputs.case_ids:
        shutil.copy2(inputs.imperfect_label(case_id), root / ORIGINALS_DIR / f"{case_id}{fe}")


def revision_sources(raw_folder: str | os.PathLike) -> tuple[Path, Path, Path | None]:
    """(revised labels, imperfect labels, noise maps or None) of a revised dataset, read from its manifest."""
    raw = Path(raw_folder)
    if not (raw / MANIFEST_NAME).is_file():
        raise FileNotFoundError(f"{raw / MANIFEST_NAME} not found: run nnUNetv2_nl_revise on {raw} first.")
    m = raw_dataset.load_json(raw / MANIFEST_NAME)
    nm = m.get("noise_maps_folder")
    return raw / m["labels_folder"], raw / m["originals_folder"], (raw / nm) if nm else None


__all__ = [
    "AuxDataset", "MEMBERS", "METHODS", "ModelStep", "NnUNetModelStep", "RevisionError", "RevisionInputs",
    "average_member_predictions", "build_aux_dataset",
    "check_reusable_model", "choose_aux_dataset_name", "noise_map", "noise_statistics", "preserve_originals",
    "recover_interrupted_swap", "resolve_dataset_folder", "revise_dataset", "revision_sources", "swap_in_folder",
    "validate_inputs", "write_revised_labels",
]
