"""``nnUNetv2_nl_export``: turn a NoiseRobustTrainer model folder into one that stock nnU-Net runs without the plugin.

Argument parsing, messages and exit statuses only; the export itself (what is written, which output folders are
refused, how a previous export is replaced) is :func:`nnunet_noisylabels.robust.export.export_model_folder`.

- ``--member all`` (default): every (fold, member) pair becomes its own fold ``fold_0, fold_1, ...``; predicting
  with all exported folds averages exactly the logits the twin model averages (members x folds);
- ``--member K``: member K only, folds keep their names (a single-network model).

Exit status 2 for bad input: a missing model folder, files or checkpoints, a checkpoint that is not a twin model,
a bad member index, or an output folder (``-o``) that is refused (it is, contains or lies inside the model folder,
is a symbolic link or not a folder, or exists and is not a previous export to replace with ``--overwrite``); exit
status 1 for other operating-system errors. Nothing is written or deleted when the output folder is refused.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from nnunet_noisylabels.robust.export import export_model_folder


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``nnUNetv2_nl_export``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_nl_export",
        description="Export a NoiseRobustTrainer model folder as a plain nnUNetTrainer model folder that stock "
                    "nnU-Net can run without nnunet-noisylabels installed.")
    parser.add_argument("-m", dest="model_folder", required=True,
                        help="trained model folder, e.g. "
                             "$nnUNet_results/Dataset001_X/NoiseRobustTrainer__nnUNetPlans__2d")
    parser.add_argument("-o", dest="output_folder", required=True, help="output model folder")
    parser.add_argument("-f", dest="folds", nargs="+", default=None,
                        help="folds to export (default: every fold with the checkpoint)")
    parser.add_argument("--member", default="all",
                        help="member network index, or 'all' (default): one exported fold per (fold, member), so "
                             "that nnU-Net's fold ensembling reproduces the averaged logits")
    parser.add_argument("-chk", dest="checkpoints", nargs="+", default=["checkpoint_final.pth"],
                        help="checkpoint file name(s) to export (default: checkpoint_final.pth)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output folder if it is a previous export (other folders are "
                             "never deleted)")
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
        return 2
    except OSError as e:
        print(f"nnUNetv2_nl_export: error: {e}", file=sys.stderr)
        return 1
    with open(Path(dst) / "export.json") as f:
        folds = [x["fold"] for x in json.load(f)["folds"]]
    print(f"Exported {len(folds)} network(s) to {dst}. Predict with stock nnU-Net: "
          f"nnUNetv2_predict_from_modelfolder -i INPUT -o OUTPUT -m {dst} -f {' '.join(folds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
