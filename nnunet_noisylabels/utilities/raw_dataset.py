"""Access to nnU-Net raw datasets: locating them, reading and validating labels, writing labels safely.

Reading and writing go through nnU-Net's own reader/writers (``dataset.json`` decides which), so every file format
nnU-Net supports is supported here. Every problem with the user's data raises :class:`RawDatasetError` with a
message that says what is wrong and how to fix it; the command-line layer turns it into a non-zero exit.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

CLEAN_LABELS_DIR = "labelsTr_clean"


class RawDatasetError(ValueError):
    """A raw dataset (or a file in it) is missing, malformed or inconsistent."""


def resolve_raw_dataset(dataset: str | int) -> Path:
    """Find the folder of a raw dataset from its id (``4``, ``"004"``) or name (``"Dataset004_Hippocampus"``).

    A path to an existing folder that holds a ``dataset.json`` is accepted as well.
    """
    as_path = Path(str(dataset))
    if as_path.is_dir() and (as_path / "dataset.json").is_file():
        return as_path
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_raw.is_set():
        raise RawDatasetError("The environment variable nnUNet_raw is not set. Export it as for nnU-Net itself, "
                              "e.g. `export nnUNet_raw=/path/to/nnUNet_raw`.")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise RawDatasetError(f"Unknown dataset {dataset!r}: {e}") from None
    folder = Path(nnUNet_raw.get()) / name
    if not (folder / "dataset.json").is_file():
        raise RawDatasetError(f"Dataset {name} has no raw folder with a dataset.json in nnUNet_raw "
                              f"({nnUNet_raw.get()}). Expected {folder / 'dataset.json'}.")
    return folder


def load_dataset_json(folder: str | os.PathLike) -> dict:
    """Read and sanity-check ``dataset.json`` of a raw dataset folder."""
    path = Path(folder) / "dataset.json"
    if not path.is_file():
        raise RawDatasetError(f"No dataset.json in {folder}. Is this an nnU-Net raw dataset folder?")
    try:
        dj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RawDatasetError(f"{path} is not valid JSON: {e}") from None
    for key in ("channel_names", "labels", "file_ending"):
        if key not in dj:
            raise RawDatasetError(f"{path} lacks the required key '{key}' (see nnU-Net's dataset format docs).")
    if "background" not in dj["labels"] or dj["labels"]["background"] != 0:
        raise RawDatasetError(f"{path}: 'labels' must map 'background' to 0.")
    return dj


def label_values(dataset_json: dict) -> set[int]:
    """All integer label values that ``dataset.json`` allows (regions resolved to their member labels)."""
    values: set[int] = set()
    for v in dataset_json["labels"].values():
        values.update(int(i) for i in (v if isinstance(v, (list, tuple)) else [v]))
    if "ignore" in dataset_json["labels"]:
        values.add(int(dataset_json["labels"]["ignore"]))
    return values


def num_classes(dataset_json: dict, allow_ignore: bool = True) -> int:
    """Number of classes including background, for plain (non-region) label maps with labels 0..K-1.

    With ``allow_ignore=False`` an 'ignore' label in dataset.json is an error (for commands that cannot handle it).
    """
    if not allow_ignore and "ignore" in dataset_json["labels"]:
        raise RawDatasetError("dataset.json declares an 'ignore' label; this command does not support ignore labels.")
    if any(isinstance(v, (list, tuple)) for v in dataset_json["labels"].values()):
        raise RawDatasetError("Region-based labels (lists of label values in dataset.json) are not supported by "
                              "this command; use one integer per class.")
    vals = sorted(int(v) for k, v in dataset_json["labels"].items() if k != "ignore")
    if vals != list(range(len(vals))):
        raise RawDatasetError(f"dataset.json labels must be consecutive integers 0..K-1, got {vals}.")
    return len(vals)


def label_files(folder: str | os.PathLike, file_ending: str, skip_hidden: bool = True) -> dict[str, Path]:
    """Case id -> file for every file ending in ``file_ending`` in ``folder`` (sorted; empty if no such folder).

    ``skip_hidden`` leaves out names starting with '.' (e.g. temporary files of an interrupted atomic write).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(file_ending) and not (skip_hidden and p.name.startswith("."))}


def training_case_ids(folder: str | os.PathLike, dataset_json: dict, labels_subdir: str = "labelsTr") -> list[str]:
    """Case identifiers of the label files in ``folder/labels_subdir`` (sorted)."""
    d = Path(folder) / labels_subdir
    if not d.is_dir():
        raise RawDatasetError(f"Missing folder {d}.")
    return sorted(label_files(d, dataset_json["file_ending"], skip_hidden=False))


def image_files(folder: str | os.PathLike, case_id: str, dataset_json: dict,
                images_subdir: str = "imagesTr", must_exist: bool = True) -> list[Path]:
    """The image files (one per channel, ``CASE_XXXX``) of a case; raises if any channel is missing.

    With ``must_exist=False`` the expected paths are returned unchecked (for callers that report missing files
    of many cases at once).
    """
    ending = dataset_json["file_ending"]
    files = [Path(folder) / images_subdir / f"{case_id}_{int(c):04d}{ending}" for c in dataset_json["channel_names"]]
    if not must_exist:
        return files
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise RawDatasetError(f"Case {case_id}: missing image file(s) {missing}. nnU-Net expects one file per channel "
                              f"named CASE_XXXX{ending} in {images_subdir}/.")
    return files


def reader_writer(dataset_json: dict, example_file: str | os.PathLike | None = None):
    """An instance of the nnU-Net reader/writer that ``dataset.json`` (and an example file) selects."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    example = str(example_file) if example_file is not None else None
    return determine_reader_writer_from_dataset_json(dataset_json, example, verbose=False)()


def read_label(path: str | os.PathLike, dataset_json: dict) -> tuple[np.ndarray, dict]:
    """Read a label map with nnU-Net's reader. Returns (seg of shape (X, Y[, Z]) as nnU-Net orders axes, props).

    For 2D formats the leading singleton axis nnU-Net adds is kept: (1, X, Y).
    """
    path = Path(path)
    if not path.is_file():
        raise RawDatasetError(f"Missing label file {path}.")
    try:
        seg, props = reader_writer(dataset_json, path).read_seg(str(path))
    except Exception as e:  # readers raise anything from RuntimeError to OSError on corrupt files
        raise RawDatasetError(f"Could not read label file {path} ({type(e).__name__}: {e}). "
                              f"Is the file corrupt or not a {dataset_json['file_ending']} file?") from None
    return np.asarray(seg[0]), props


def spatial_view(seg: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, list[float]]:
    """A label map as nnU-Net's readers return it, (1, X, Y[, Z]), as a 2D or 3D array with its spacing.

    2D formats come as (1, 1, X, Y) with a dummy spacing on the first axis: they are returned as (X, Y) with the
    spacing of the last two axes; 3D maps as (X, Y, Z) with their spacing.
    """
    if seg.ndim != 4 or seg.shape[0] != 1:
        raise ValueError(f"Expected a label map of shape (1, X, Y, Z) as nnU-Net reads it, got {seg.shape}.")
    is2d = seg.shape[1] == 1
    return (seg[0, 0], [float(s) for s in spacing][1:]) if is2d else (seg[0], [float(s) for s in spacing])


def read_images(paths: Iterable[str | os.PathLike], dataset_json: dict) -> tuple[np.ndarray, dict]:
    """Read the channel files of one case with nnU-Net's reader. Returns (data (C, X, Y[, Z]), props)."""
    paths = [str(p) for p in paths]
    try:
        return reader_writer(dataset_json, paths[0]).read_images(paths)
    except Exception as e:
        raise RawDatasetError(f"Could not read image file(s) {paths} ({type(e).__name__}: {e}).") from None


def load_json(path: str | os.PathLike) -> dict:
    """Read a JSON file (no checks; see :func:`load_dataset_json` for a raw dataset's dataset.json)."""
    with open(path) as f:
        return json.load(f)


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, then move it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(obj: Any, path: str | os.PathLike, indent: int = 2) -> None:
    """:func:`write_text_atomic` for a JSON document."""
    write_text_atomic(json.dumps(obj, indent=indent), path)


def write_label_atomic(seg: np.ndarray, path: str | os.PathLike, props: dict, dataset_json: dict) -> None:
    """Write a label map with nnU-Net's writer to a temporary file beside ``path``, then move it into place.

    A crash leaves either the old file or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ending = dataset_json["file_ending"]
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=ending, dir=path.parent)
    os.close(fd)
    try:
        reader_writer(dataset_json).write_seg(np.asarray(seg).astype(np.uint8 if seg.max() < 256 else np.uint16),
                                                     tmp, props)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_label_values(seg: np.ndarray, dataset_json: dict, path: Any = "") -> None:
    """Raise if ``seg`` holds values that dataset.json does not declare."""
    found = set(np.unique(seg).astype(int).tolist())
    unknown = sorted(found - label_values(dataset_json))
    if unknown:
        raise RawDatasetError(f"{path}: label values {unknown} are not declared in dataset.json 'labels' "
                              f"({dataset_json['labels']}). Fix the label file or add the labels to dataset.json.")


def check_same_geometry(props_a: dict, props_b: dict, what: str, shape_a: tuple | None = None,
                        shape_b: tuple | None = None, atol: float = 1e-3) -> None:
    """Raise if two files differ in shape (when given) or spacing. ``what`` names the pair in the message."""
    if shape_a is not None and shape_b is not None and tuple(shape_a) != tuple(shape_b):
        raise RawDatasetError(f"{what}: shapes differ ({tuple(shape_a)} vs {tuple(shape_b)}). Image and labels of a "
                              f"case must have the same shape.")
    sa, sb = props_a.get("spacing"), props_b.get("spacing")
    if sa is not None and sb is not None and not np.allclose(np.asarray(sa, float), np.asarray(sb, float), atol=atol):
        raise RawDatasetError(f"{what}: spacings differ ({tuple(sa)} vs {tuple(sb)}). Resample one of them so that "
                              f"they match.")
