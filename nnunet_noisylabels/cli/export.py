"""``nnUNetv2_nl_export``: turn a NoiseRobustTrainer model folder into one that stock nnU-Net runs without the plugin.

A NoiseRobustTrainer checkpoint holds a :class:`~nnunet_noisylabels.networks.twin.TwinNetwork` whose eval output is
the mean logits of its members. Stock nnU-Net builds one plain network per checkpoint and averages the logits of all
folds it is given, so the export writes each member as a plain ``nnUNetTrainer`` checkpoint:

- ``--member all`` (default): every (fold, member) pair becomes its own fold ``fold_0, fold_1, ...``; predicting
  with all exported folds averages exactly the logits the twin model averages (members x folds);
- ``--member K``: member K only, folds keep their names (a single-network model).

The mapping is recorded in ``export.json`` in the output folder. Predict with
``nnUNetv2_predict_from_modelfolder -i IN -o OUT -m EXPORTED`` (or place the folder in nnUNet_results under an
``nnUNetTrainer__PLANS__CONFIG`` name and use ``nnUNetv2_predict``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

STOCK_TRAINER = "nnUNetTrainer"
COPIED_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")


def _fold_key(name: str):
    f = name[len("fold_"):]
    return (1, f) if f == "all" else (0, int(f)) if f.isdigit() else (2, f)


def export_model_folder(model_folder: str | os.PathLike, output_folder: str | os.PathLike,
                        member: int | str = "all", folds: Sequence[str] | None = None,
                        checkpoint_names: Sequence[str] = ("checkpoint_final.pth",), overwrite: bool = False,
                        verbose: bool = True) -> Path:
    """Export a NoiseRobustTrainer model folder as a stock-nnU-Net model folder.

    Args:
        model_folder: the trained folder (``.../NoiseRobustTrainer__nnUNetPlans__2d``) with plans.json,
            dataset.json and ``fold_*`` subfolders.
        output_folder: where to write the exported model folder (must not exist unless ``overwrite``).
        member: member index, or ``"all"`` for one exported fold per (fold, member) pair (averaged logits).
        folds: source folds to export (``"0"``, ``"all"``, ...); default every fold that has the checkpoints.
        checkpoint_names: checkpoint files to convert in every fold; each must exist.
        overwrite: replace an existing output folder.
        verbose: print what is written.

    Returns:
        The output folder.

    Raises:
        FileNotFoundError: missing model folder, files or checkpoints.
        ValueError: not a twin checkpoint, bad member index, or existing output without ``overwrite``.
    """
    import torch

    from nnunet_noisylabels.networks.twin import split_member_state_dicts

    src = Path(model_folder)
    dst = Path(output_folder)
    for name in ("plans.json", "dataset.json"):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src / name} not found: pass the trained model folder (the one holding "
                                    f"plans.json, dataset.json and fold_X), e.g. "
                                    f"$nnUNet_results/DatasetXXX_Name/NoiseRobustTrainer__nnUNetPlans__2d")
    if dst.resolve() == src.resolve():
        raise ValueError("the output folder must differ from the model folder")
    if dst.exists() and not overwrite:
        raise ValueError(f"output folder {dst} exists; choose another one or pass --overwrite")
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

    # write into a temporary folder beside the target, then move: never a half-written model folder
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        for name in COPIED_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        mapping = []
        next_fold = 0
        for fd in fold_dirs:
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
        with open(tmp / "export.json", "w") as f:
            json.dump({"source_model_folder": src.name, "member": member, "checkpoints": list(checkpoint_names),
                       "trainer_name": STOCK_TRAINER, "folds": mapping,
                       "note": "predicting with all exported folds averages the same logits as the source model"},
                      f, indent=2)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``nnUNetv2_nl_export``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_nl_export",
        description="Export a NoiseRobustTrainer model folder as a plain nnUNetTrainer model folder that stock "
                    "nnU-Net can run without nnunet-noisylabels installed.")
    parser.add_argument("-m", dest="model_folder", required=True,
                        help="trained model folder, e.g. $nnUNet_results/Dataset001_X/NoiseRobustTrainer__nnUNetPlans__2d")
    parser.add_argument("-o", dest="output_folder", required=True, help="output model folder")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help="folds to export (default: every fold with the checkpoint)")
    parser.add_argument("--member", default="all",
                        help="member network index, or 'all' (default): one exported fold per (fold, member), so "
                             "that nnU-Net's fold ensembling reproduces the averaged logits")
    parser.add_argument("-chk", dest="checkpoints", nargs="+", default=["checkpoint_final.pth"],
                        help="checkpoint file name(s) to export (default: checkpoint_final.pth)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--verbose", action="store_true", help="print every exported fold")
    args = parser.parse_args(argv)
    member: int | str = args.member
    if member != "all":
        if not str(member).isdigit():
            parser.error(f"--member must be a non-negative integer or 'all', got {member!r}")
        member = int(member)
    try:
        dst = export_model_folder(args.model_folder, args.output_folder, member, args.folds, args.checkpoints,
                                  args.overwrite, verbose=args.verbose)
    except (FileNotFoundError, ValueError) as e:
        print(f"nnUNetv2_nl_export: error: {e}", file=sys.stderr)
        return 1
    with open(Path(dst) / "export.json") as f:
        folds = [x["fold"] for x in json.load(f)["folds"]]
    print(f"Exported {len(folds)} network(s) to {dst}. Predict with stock nnU-Net: "
          f"nnUNetv2_predict_from_modelfolder -i INPUT -o OUTPUT -m {dst} -f {' '.join(folds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
