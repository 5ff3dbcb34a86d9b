"""The registry of the plugin's nnU-Net trainer classes.

:func:`all_trainer_classes` imports the trainer module of every stage and the generated training-length
variants (:data:`TRAINER_MODULES`); it is what nnU-Net's external-trainer lookup sees (``nnunet_noisylabels/nnunet_ext``).
A new trainer goes into its stage's trainer module, its short/budget variants into :mod:`.variants`.
"""
from __future__ import annotations

import importlib

TRAINER_MODULES = (
    "nnunet_noisylabels.revision.nin.trainer",
    "nnunet_noisylabels.robust.trainer",
    "nnunet_noisylabels.baselines.trainers",
    "nnunet_noisylabels.trainers.variants",
)


def all_trainer_classes() -> dict[str, type]:
    """Import every trainer module and return its public nnUNetTrainer subclasses by name."""
    from nnunet_noisylabels import check_nnunet_version

    check_nnunet_version()
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    found: dict[str, type] = {}
    for module_name in TRAINER_MODULES:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if (not name.startswith('_') and isinstance(obj, type) and issubclass(obj, nnUNetTrainer)
                    and obj.__module__ == module.__name__):
                found[name] = obj
    return found
