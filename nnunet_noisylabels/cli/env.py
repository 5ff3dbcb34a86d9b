"""``nnUNetv2_nl_env``: check the installation and print the environment line for nnU-Net's trainer lookup."""
from __future__ import annotations

import argparse
import os
import sys

from nnunet_noisylabels import __version__, check_nnunet_version
from nnunet_noisylabels._autoenv import DISABLE_VAR, ext_trainer_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_nl_env",
        description="Check that nnU-Net finds the nnunet-noisylabels trainers and print the export line for "
                    "nnUNet_extTrainer (needed only when the automatic registration is off, e.g. with "
                    f"{DISABLE_VAR}=1 or an editable install).")
    parser.add_argument("--export", action="store_true", help="print only the shell export line")
    args = parser.parse_args(argv)
    path = ext_trainer_dir()
    line = f"export nnUNet_extTrainer=\"{path}${{nnUNet_extTrainer:+:$nnUNet_extTrainer}}\""
    if args.export:
        print(line)
        return 0
    try:
        nnunet = check_nnunet_version()
    except RuntimeError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    registered = path in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep)
    print(f"nnunet-noisylabels {__version__}, nnunetv2 {nnunet}")
    print(f"trainer folder: {path}")
    print(f"registered in nnUNet_extTrainer: {'yes' if registered else 'no'}")
    if not registered:
        print("Add this line next to your nnUNet_raw / nnUNet_preprocessed / nnUNet_results exports:")
        print(line)
    from nnunet_noisylabels.trainers import all_trainer_classes

    print("trainers: " + ", ".join(sorted(all_trainer_classes())))
    return 0 if registered else 2


if __name__ == "__main__":
    sys.exit(main())
