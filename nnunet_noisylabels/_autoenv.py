"""Registers the plugin's trainers with nnU-Net at interpreter start-up.

nnU-Net (>= 2.8) searches the folders listed in the environment variable ``nnUNet_extTrainer`` for trainer classes
that are not built in, reading the variable when a command runs. The installed ``nnunet_noisylabels.pth`` calls
:func:`register` in every Python process of the environment, which appends this package's trainer folder to that
variable, so stock ``nnUNetv2_train -tr NoiseRobustTrainer`` and ``nnUNetv2_predict`` find the trainers with no
extra step. Set ``NNUNET_NOISYLABELS_NO_AUTOENV=1`` to turn this off and export the variable yourself
(``nnUNetv2_nl_env`` prints the line).
"""
from __future__ import annotations

import os

DISABLE_VAR = "NNUNET_NOISYLABELS_NO_AUTOENV"


def ext_trainer_dir() -> str:
    """The folder to add to ``nnUNet_extTrainer``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")


def register(environ=os.environ) -> bool:
    """Append :func:`ext_trainer_dir` to ``nnUNet_extTrainer`` unless present or disabled. Returns True if set."""
    if environ.get(DISABLE_VAR, "").lower() in ("1", "true", "yes"):
        return False
    path = ext_trainer_dir()
    current = [p for p in environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if path not in current:
        environ["nnUNet_extTrainer"] = os.pathsep.join(current + [path])
    return True
