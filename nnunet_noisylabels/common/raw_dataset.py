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


def current_umask() -> int:
    """The process umask (read without changing it for longer than the two calls)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_as_created(path: str | os.PathLike, directory: bool = False) -> None:
    # mkstemp/mkdtemp create 0600/0700 whatever the umask; a file we write should get the mode open()/mkdir() give
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new hidden-by-prefix temporary folder in ``parent`` with the mode ``mkdir`` would give (umask respected),
    to be filled and then renamed into place."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    _chmod_as_created(tmp, directory=True)
    return tmp


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, then move it into place (the file gets
    the mode ``open()`` would give it, umask respected)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _chmod_as_created(tmp)
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
        _chmod_as_created(tmp)
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


# ---------------------------------------------------------------------------------------------------------------
# checks of a whole case (image channels + label) before anything is written
# ---------------------------------------------------------------------------------------------------------------
NIFTI_ENDINGS = (".nii", ".nii.gz")
_DUMMY_2D_SPACING = 999  # nnU-Net's readers give 2D data the shape (1, 1, X, Y) and this spacing on the first axis


def _nifti_expected_size(header: bytes) -> int | None:
    """Bytes a NIfTI-1/2 file must hold (voxel offset + data), from its header; None if it is no NIfTI header."""
    import struct

    for endian in "<>":
        if len(header) >= 4 and struct.unpack(f"{endian}i", header[:4])[0] == 348 and len(header) >= 348:
            dims = struct.unpack(f"{endian}8h", header[40:56])
            bitpix = struct.unpack(f"{endian}h", header[72:74])[0]
            offset = max(int(struct.unpack(f"{endian}f", header[108:112])[0]), 352)
            break
        if len(header) >= 4 and struct.unpack(f"{endian}i", header[:4])[0] == 540 and len(header) >= 540:
            dims = struct.unpack(f"{endian}8q", header[16:80])
            bitpix = struct.unpack(f"{endian}h", header[14:16])[0]
            offset = max(int(struct.unpack(f"{endian}q", header[168:176])[0]), 544)
            break
    else:
        return None
    n = 1
    for d in dims[1:1 + max(0, min(int(dims[0]), 7))]:
        n *= max(int(d), 1)
    return offset + n * max(int(bitpix), 8) // 8


def check_file_complete(path: str | os.PathLike) -> None:
    """Raise if a NIfTI file (``.nii``/``.nii.gz``) is cut short.

    SimpleITK reads a truncated gzip stream or a file shorter than its header announces without an error and fills
    the missing voxels with zeros; this check reads the whole file once. Other formats are left to their readers
    (which raise on truncated files).
    """
    import zlib

    path = Path(path)
    name = path.name.lower()
    if not name.endswith(NIFTI_ENDINGS):
        return
    head, total = b"", 0
    with open(path, "rb") as f:
        if name.endswith(".gz"):
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                data = d.decompress(chunk)
                while d.eof and d.unused_data:  # concatenated gzip members
                    rest = d.unused_data
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    data += d.decompress(rest)
                if len(head) < 544:
                    head += data[:544 - len(head)]
                total += len(data)
            if not d.eof:
                raise RawDatasetError(f"{path} is truncated (its gzip stream ends early): the file was cut short, "
                                      f"e.g. by an interrupted copy. Copy or export it again.")
        else:
            head = f.read(544)
            total = path.stat().st_size
    expected = _nifti_expected_size(head)
    if expected is not None and total < expected:
        raise RawDatasetError(f"{path} is truncated: it holds {total} bytes of image data where its header "
                              f"announces {expected}. Copy or export it again.")


def count_nonfinite(paths: Sequence[str | os.PathLike], data: np.ndarray) -> int:
    """NaN/inf voxels of a case's image channels: in ``data`` as nnU-Net's reader returns it, and, for NIfTI files
    with a floating-point data type, in the file itself (SimpleITK's NIfTI reader turns NaN into 0 silently, so a
    NaN image would train and be revised as if it were black there)."""
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data))) if np.issubdtype(data.dtype, np.floating) else 0
    for p in paths:
        if str(p).lower().endswith(NIFTI_ENDINGS):
            import nibabel

            img = nibabel.load(str(p))
            if np.issubdtype(img.get_data_dtype(), np.floating):
                raw = np.asanyarray(img.dataobj)
                bad = max(bad, int(raw.size - np.count_nonzero(np.isfinite(raw))))
    return bad


def case_dimensionality(props: dict) -> int:
    """2 or 3: whether nnU-Net's reader gave a case the dummy spacing of 2D data (see :func:`spatial_view`)."""
    spacing = props.get("spacing") or ()
    return 2 if len(spacing) == 3 and float(spacing[0]) == _DUMMY_2D_SPACING else 3


def check_case(case_id: str, image_paths: Sequence[str | os.PathLike], label_path: str | os.PathLike,
               dataset_json: dict, expected_dimensionality: int | None = None, geometry_atol: float = 1e-3
               ) -> tuple[np.ndarray, dict]:
    """Read a training case with nnU-Net's readers and check it; nothing is written.

    Checks: every file readable and complete (truncated NIfTI files included), image intensities finite (a NaN
    makes nnU-Net's normalization and every prediction of the case NaN, i.e. background), image channels and label
    of the same shape and spacing, label values declared in dataset.json, and the case as 2D or 3D as the others
    (``expected_dimensionality``).

    Returns:
        (label as nnU-Net reads it, (1, X, Y, Z); its reader properties).

    Raises:
        RawDatasetError: with a message naming the case and the file, and saying how to fix it.
    """
    label_path = Path(label_path)
    paths = [Path(p) for p in image_paths]
    for p in paths + [label_path]:
        if not p.is_file():
            raise RawDatasetError(f"Case {case_id}: missing file {p}.")
        check_file_complete(p)
    seg, props = read_label(label_path, dataset_json)
    seg = seg[None]
    check_label_values(seg, dataset_json, label_path)
    data, img_props = read_images(paths, dataset_json)
    bad = count_nonfinite(paths, data)
    if bad:
        raise RawDatasetError(f"Case {case_id}: {bad} voxel(s) of its image ({paths[0].name}"
                              f"{' ...' if len(paths) > 1 else ''}) are NaN or infinite. Readers turn them into 0 or "
                              f"nnU-Net's normalization turns the whole case into NaN; replace them (e.g. by the "
                              f"background intensity) or leave the case out.")
    check_same_geometry(img_props, props, f"Case {case_id} ({label_path.name} vs {paths[0].name})",
                        tuple(data.shape[1:]), tuple(seg.shape[1:]), atol=geometry_atol)
    dim = case_dimensionality(props)
    if case_dimensionality(img_props) != dim:
        raise RawDatasetError(f"Case {case_id}: the label is {dim}D but the image is "
                              f"{case_dimensionality(img_props)}D.")
    if expected_dimensionality is not None and dim != expected_dimensionality:
        raise RawDatasetError(f"Case {case_id} ({label_path.name}) is {dim}D, the other cases are "
                              f"{expected_dimensionality}D. A dataset is either 2D or 3D; convert or remove it.")
    return seg, props
