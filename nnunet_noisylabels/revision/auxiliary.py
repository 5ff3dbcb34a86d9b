"""The auxiliary nnU-Net dataset a revision model trains on: its name (tied to the source dataset) and its
content (image channels, plus the imperfect label as channels for the noise identification network; see
:mod:`.aux_dataset` for the channel convention).
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_noisylabels.common import raw_dataset, safe_fs
from nnunet_noisylabels.revision.aux_dataset import (aux_dataset_json_keys, imperfect_label_to_channels,
                                                     label_channel_names)
from nnunet_noisylabels.revision.base import AUX_ID_RANGE, AUX_SUFFIX, RevisionError, link_or_copy, progress_bar
from nnunet_noisylabels.revision.inputs import RevisionInputs


def _dataset_folders(root: str | None) -> dict[int, str]:
    out = {}
    if root and os.path.isdir(root):
        for name in os.listdir(root):
            m = re.fullmatch(r"Dataset(\d{3})_(.+)", name)
            if m:
                out.setdefault(int(m.group(1)), name)
    return out


def used_dataset_ids() -> dict[int, str]:
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
    used = used_dataset_ids()
    if aux_id is not None:
        if not 1 <= int(aux_id) <= 999:
            raise RevisionError(f"--aux_id must be in 1..999, got {aux_id}.")
        full = f"Dataset{int(aux_id):03d}_{name}"
        if int(aux_id) in used and used[int(aux_id)] != full:
            raise RevisionError(f"Dataset id {aux_id} is already taken by {used[int(aux_id)]}; choose another "
                                f"--aux_id.")
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


def write_case_inputs(inputs: RevisionInputs, rw, case_id: str, folder: Path, label: np.ndarray | None) -> None:
    """One case's input files of an auxiliary dataset: its image channels (linked) and, when ``label`` (nnU-Net's
    label layout without the channel axis) is given, the label one-hot encoded as the K-1 channels after them."""
    fe, C = inputs.file_ending, inputs.num_image_channels
    images = inputs.images(case_id)
    for c, src in enumerate(images):
        link_or_copy(src, folder / f"{case_id}_{c:04d}{fe}")
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
    for case_id, sub in progress_bar(jobs, "Building auxiliary dataset", progress):
        seg = rw.read_seg(str(inputs.imperfect_label(case_id)))[0][0] if method == "nin" else None
        write_case_inputs(inputs, rw, case_id, aux / sub, seg)
        if sub == "imagesTr":
            shutil.copy2(inputs.clean_label(case_id), aux / "labelsTr" / f"{case_id}{fe}")
    return AuxDataset(folder=aux, method=method, dataset_json=djson, train_ids=list(inputs.clean_ids),
                      predict_ids=list(inputs.revise_ids))
