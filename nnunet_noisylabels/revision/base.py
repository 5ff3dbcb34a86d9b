"""Names, errors and small helpers that every step of the label revision uses (folders of a revised dataset,
noise-map codes, methods and their default trainers).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from nnunet_noisylabels.common.raw_dataset import RawDatasetError

LABELS_DIR = "labelsTr"


CLEAN_DIR = "labelsTr_clean"


ORIGINALS_DIR = "labelsTr_imperfect"


# the revision without its uncertain band (``--uncertain_band``): what labelsTr would hold without the ignore label
HARD_DIR = "labelsTr_hard"

# the plugin's key in a revised dataset's dataset.json (nnU-Net ignores unknown keys and copies the file into
# nnUNet_preprocessed, so trainers read it): {"clean_cases": [...], "uncertain_band": {...}}
DATASET_JSON_KEY = "nnunet_noisylabels"


NOISE_MAPS_DIR = "noise_maps"


MANIFEST_NAME = "labelsTr_revision.json"


REPORT_DIR = "labelsTr_revision_report"


METHODS = ("nin", "clean_only", "ensemble")


MEMBERS = {"nin": ("nin",), "clean_only": ("clean_only",), "ensemble": ("nin", "clean_only")}


DEFAULT_TRAINERS = {"nin": "NoiseIdentificationTrainer", "clean_only": "nnUNetTrainer"}


DEFAULT_CHECKPOINT = "checkpoint_final.pth"


AUX_SUFFIX = {"nin": "NIN", "clean_only": "NLclean"}


AUX_ID_RANGE = range(500, 1000)


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


def num_image_channels(dataset_json: dict) -> int:
    names = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not names:
        raise RevisionError("dataset.json has no 'channel_names'.")
    return len(names)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    # Hard links keep the auxiliary dataset cheap; nnU-Net never writes into raw images. The source is resolved
    # first: a hard link to a relative symlink (images of a corrupted copy point to the clean dataset's) would
    # point elsewhere from a folder at another depth.
    src = Path(src).resolve()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def progress_bar(iterable: Iterable, desc: str, enabled: bool, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total)


def geometry(props: dict) -> dict:
    """The comparable part of nnU-Net reader properties (spacing and, for SimpleITK files, origin/direction)."""
    out = {"spacing": tuple(float(s) for s in props.get("spacing", ()))}
    sitk = props.get("sitk_stuff")
    if sitk:
        out["origin"] = tuple(float(s) for s in sitk.get("origin", ()))
        out["direction"] = tuple(float(s) for s in sitk.get("direction", ()))
    return out


def same_geometry(a: dict, b: dict) -> bool:
    ga, gb = geometry(a), geometry(b)
    return all(k not in gb or np.allclose(ga[k], gb[k], atol=1e-4) for k in ga if len(ga[k]) == len(gb.get(k, ())))
