"""Export a NoiseRobustTrainer model folder as one that stock nnU-Net runs without the plugin (the library behind
``nnUNetv2_nl_export``).

A NoiseRobustTrainer checkpoint holds a :class:`~nnunet_noisylabels.robust.twin.TwinNetwork` whose eval output is
the mean logits of its members. Stock nnU-Net builds one plain network per checkpoint and averages the logits of all
folds it is given, so the export writes each member as a plain ``nnUNetTrainer`` checkpoint:

- ``member="all"`` (default): every (fold, member) pair becomes its own fold ``fold_0, fold_1, ...``; predicting
  with all exported folds averages exactly the logits the twin model averages (members x folds);
- ``member=K``: member K only, folds keep their names (a single-network model).

The mapping is recorded in ``export.json`` in the output folder. Predict with
``nnUNetv2_predict_from_modelfolder -i IN -o OUT -m EXPORTED`` (or place the folder in nnUNet_results under an
``nnUNetTrainer__PLANS__CONFIG`` name and use ``nnUNetv2_predict``).

The output folder is checked before anything is written; :func:`export_model_folder` raises
:class:`ExportRefused` for:

- an output folder that is the model folder, contains it or lies inside it (paths compared after resolving
  symbolic links), so that an export can never overwrite or delete its own source;
- an output path that is itself a symbolic link (also a dangling one): nothing is written or deleted through a
  link, and a link is never replaced by a folder; pass the real path instead (links in the *parent* folders of
  the output are fine, they are resolved);
- an output path that exists and is not a folder (a file, ...);
- an existing folder without ``overwrite``; with ``overwrite``, an existing folder that is not a previous export
  (one holding the ``export.json`` this module writes, see :func:`is_previous_export`): a folder the export did not
  create is never deleted.

The export is written into a temporary folder beside the output folder (with the mode ``mkdir`` gives, umask
respected) and moved into place when complete. ``overwrite`` first renames the previous export aside, moves the new
one in, then deletes the old one, so an interrupted export leaves the old export or the new one, never neither.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Sequence

from nnunet_noisylabels.common.raw_dataset import make_temp_dir
from nnunet_noisylabels.common.safe_fs import replace_folder

STOCK_TRAINER = "nnUNetTrainer"
COPIED_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
#: marker written to ``export.json``: ``overwrite`` only replaces folders that carry it (or older exports)
EXPORT_FORMAT = "nnunet_noisylabels.export/1"


class ExportRefused(ValueError):
    """The output folder given to the export is unsafe or not replaceable (nothing has been written)."""


def _fold_key(name: str):
    f = name[len("fold_"):]
    return (1, f) if f == "all" else (0, int(f)) if f.isdigit() else (2, f)


def is_previous_export(folder: str | os.PathLike) -> bool:
    """True if ``folder`` is a real folder holding the ``export.json`` written by :func:`export_model_folder` (with
    the format marker, or an older one with ``source_model_folder`` and ``folds``)."""
    folder = Path(folder)
    meta = folder / "export.json"
    if folder.is_symlink() or not folder.is_dir() or meta.is_symlink() or not meta.is_file():
        return False
    try:
        with open(meta) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict):
        return False
    legacy = "source_model_folder" in info and isinstance(info.get("folds"), list)  # written before the marker
    return info.get("format") == EXPORT_FORMAT or legacy


def _check_model_folder(model_folder: str | os.PathLike) -> Path:
    """Raise FileNotFoundError unless ``model_folder`` holds plans.json and dataset.json; returns it resolved."""
    for name in ("plans.json", "dataset.json"):
        if not (Path(model_folder) / name).is_file():
            raise FileNotFoundError(f"{Path(model_folder) / name} not found: pass the trained model folder (the one "
                                    f"holding plans.json, dataset.json and fold_X) with -m, e.g. "
                                    f"$nnUNet_results/DatasetXXX_Name/NoiseRobustTrainer__nnUNetPlans__2d")
    return Path(model_folder).resolve()


def _check_output_folder(src: Path, dst: Path, overwrite: bool) -> Path:
    """Refuse unsafe output folders (see the module docstring); returns the resolved output path."""
    if dst.is_symlink():
        raise ExportRefused(f"output path {dst} is a symbolic link (to {os.readlink(dst)}); the export neither writes "
                            f"nor deletes through links. Pass the real folder path, or a new path, with -o.")
    resolved = dst.resolve()
    if resolved == src:
        raise ExportRefused(f"the output folder {dst} is the model folder itself; choose a new folder with -o, e.g. "
                            f"{src.parent / (src.name + '_export')}")
    if resolved in src.parents:
        raise ExportRefused(f"the output folder {dst} contains the model folder {src}; writing there could delete the "
                            f"model. Choose a new folder with -o, e.g. {src.parent / (src.name + '_export')}")
    if src in resolved.parents:
        raise ExportRefused(f"the output folder {dst} lies inside the model folder {src}; choose a folder outside "
                            f"it with -o, e.g. {src.parent / (src.name + '_export')}")
    for parent in resolved.parents:
        if parent.exists() and not parent.is_dir():
            raise ExportRefused(f"cannot create the output folder {dst}: {parent} is not a folder.")
    if resolved.exists():
        if not resolved.is_dir():
            raise ExportRefused(f"output path {dst} exists and is not a folder; choose a new folder with -o or remove "
                                f"it yourself.")
        if not overwrite:
            raise ExportRefused(f"output folder {dst} exists; choose a new folder with -o, or pass --overwrite to "
                                f"replace a previous export.")
        if not is_previous_export(resolved):
            raise ExportRefused(f"output folder {dst} exists and is not a previous export (it has no export.json "
                                f"written by nnUNetv2_nl_export); --overwrite only replaces previous exports and "
                                f"never deletes other folders. Choose a new folder with -o or remove it yourself.")
    return resolved


def _source_folds(src: Path, folds: Sequence[str] | None, checkpoint_names: Sequence[str]) -> list[str]:
    """The ``fold_*`` folder names to export (default: every fold holding all checkpoints); each must hold them."""
    if folds is None:
        fold_dirs = sorted((p.name for p in src.glob("fold_*") if p.is_dir()
                            and all((p / c).is_file() for c in checkpoint_names)), key=_fold_key)
        if not fold_dirs:
            raise FileNotFoundError(f"no fold_* folder in {src} holds {list(checkpoint_names)}; has training "
                                    f"finished? (use -chk checkpoint_best.pth / checkpoint_latest.pth otherwise)")
    else:
        fold_dirs = [f"fold_{f}" for f in folds]
    for fd in fold_dirs:
        for c in checkpoint_names:
            if not (src / fd / c).is_file():
                raise FileNotFoundError(f"{src / fd / c} not found")
    return fold_dirs


def _make_parents(folder: Path) -> list[Path]:
    """Create the missing parents of ``folder``; returns those created, deepest first (to remove on failure)."""
    missing = [p for p in folder.parents if not p.exists()]
    folder.parent.mkdir(parents=True, exist_ok=True)
    return missing


def _export_fold(src: Path, fd: str, tmp: Path, member: int | str, checkpoint_names: Sequence[str],
                 next_fold: int, verbose: bool) -> list[dict[str, Any]]:
    """Write the member(s) of source fold ``fd`` as plain checkpoints into ``tmp``; returns the mapping entries.

    With ``member="all"`` the exported folds are numbered from ``next_fold`` on; otherwise the fold keeps its name.
    """
    import torch

    from nnunet_noisylabels.robust.twin import split_member_state_dicts

    loaded = {c: torch.load(src / fd / c, map_location="cpu", weights_only=False) for c in checkpoint_names}
    split = {c: split_member_state_dicts(ck["network_weights"]) for c, ck in loaded.items()}
    n = len(next(iter(split.values())))
    if member == "all":
        members = list(range(n))
    else:
        if not 0 <= int(member) < n:
            raise ValueError(f"member {member} requested but {src / fd} has {n} member network(s) "
                             f"(valid: 0..{n - 1} or 'all')")
        members = [int(member)]
    mapping = []
    for m in members:
        if member == "all":
            new_fold: int | str = next_fold
            next_fold += 1
        else:
            new_fold = fd[len("fold_"):]
            new_fold = int(new_fold) if new_fold.isdigit() else new_fold
        out_dir = tmp / f"fold_{new_fold}"
        out_dir.mkdir()
        for c, ck in loaded.items():
            init_args = dict(ck["init_args"])
            init_args["fold"] = new_fold
            torch.save({
                "network_weights": split[c][m],
                "trainer_name": STOCK_TRAINER,
                "init_args": init_args,
                "current_epoch": ck.get("current_epoch"),
                "inference_allowed_mirroring_axes": ck.get("inference_allowed_mirroring_axes"),
                "nnunet_noisylabels_export": {"source_trainer": ck.get("trainer_name"),
                                              "source_fold": fd[len("fold_"):], "member": m},
            }, out_dir / c)
        mapping.append({"fold": str(new_fold), "source_fold": fd[len("fold_"):], "member": m})
        if verbose:
            print(f"{fd} member {m} -> fold_{new_fold}")
    return mapping


def _write_export(src: Path, tmp: Path, fold_dirs: Sequence[str], member: int | str,
                  checkpoint_names: Sequence[str], verbose: bool) -> None:
    """Write the complete export (copied plans and dataset files, converted checkpoints, export.json) into ``tmp``."""
    for name in COPIED_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / name)  # not copy2: the mode follows the umask, not the source
    mapping: list[dict[str, Any]] = []
    for fd in fold_dirs:
        mapping += _export_fold(src, fd, tmp, member, checkpoint_names, len(mapping), verbose)
    with open(tmp / "export.json", "w") as f:
        json.dump({"format": EXPORT_FORMAT, "source_model_folder": src.name, "member": member,
                   "checkpoints": list(checkpoint_names), "trainer_name": STOCK_TRAINER, "folds": mapping,
                   "note": "predicting with all exported folds averages the same logits as the source model"},
                  f, indent=2)


def export_model_folder(model_folder: str | os.PathLike, output_folder: str | os.PathLike,
                        member: int | str = "all", folds: Sequence[str] | None = None,
                        checkpoint_names: Sequence[str] = ("checkpoint_final.pth",), overwrite: bool = False,
                        verbose: bool = True) -> Path:
    """Export a NoiseRobustTrainer model folder as a stock-nnU-Net model folder.

    Args:
        model_folder: the trained folder (``.../NoiseRobustTrainer__nnUNetPlans__2d``) with plans.json,
            dataset.json and ``fold_*`` subfolders.
        output_folder: where to write the exported model folder (must not exist unless ``overwrite``; see the
            module docstring for the folders that are refused).
        member: member index, or ``"all"`` for one exported fold per (fold, member) pair (averaged logits).
        folds: source folds to export (``"0"``, ``"all"``, ...); default every fold that has the checkpoints.
        checkpoint_names: checkpoint files to convert in every fold; each must exist.
        overwrite: replace an existing output folder if it is a previous export.
        verbose: print what is written.

    Returns:
        The output folder.

    Raises:
        FileNotFoundError: missing model folder, files or checkpoints.
        ExportRefused: the output folder is unsafe (overlaps the model, is a link or a file, or exists and is not
            a previous export).
        ValueError: not a twin checkpoint, bad member index, or existing output without ``overwrite``.
    """
    src = _check_model_folder(model_folder)
    dst = _check_output_folder(src, Path(output_folder), overwrite)
    fold_dirs = _source_folds(src, folds, checkpoint_names)

    # write into a temporary folder beside the target, then move: never a half-written model folder
    created_parents = _make_parents(dst)
    tmp = None
    try:
        tmp = make_temp_dir(dst.parent, prefix=f".{dst.name}.")
        _write_export(src, tmp, fold_dirs, member, checkpoint_names, verbose)
        _move_into_place(tmp, dst, overwrite)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for p in created_parents:  # deepest first; only folders this call created, and only if still empty
            try:
                p.rmdir()
            except OSError:
                break
        raise
    return dst


def _move_into_place(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Move the finished export ``tmp`` to ``dst``; a previous export there is renamed aside, replaced, then
    deleted (checked again: the folder may have changed while the checkpoints were converted)."""
    occupied = dst.exists() or dst.is_symlink()
    if occupied and (dst.is_symlink() or not overwrite or not is_previous_export(dst)):
        raise ExportRefused(f"output folder {dst} appeared or changed during the export (it is not a previous export "
                            f"that --overwrite may replace); nothing was replaced. Choose a new folder with -o.")
    replace_folder(tmp, dst, dst.parent / f".{dst.name}.old-{secrets.token_hex(4)}")
