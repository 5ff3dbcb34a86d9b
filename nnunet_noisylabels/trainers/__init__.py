"""nnU-Net trainer classes of the plugin.

Every module in this package is imported by :func:`all_trainer_classes`, which is what nnU-Net's external-trainer
lookup sees (``nnunet_noisylabels/nnunet_ext``). A new trainer only needs a new module here.
"""
from __future__ import annotations

import importlib
import pkgutil


def all_trainer_classes() -> dict[str, type]:
    """Import every module of this package and return its public nnUNetTrainer subclasses by name."""
    from nnunet_noisylabels import check_nnunet_version

    check_nnunet_version()
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, obj in vars(module).items():
            if (not name.startswith('_') and isinstance(obj, type) and issubclass(obj, nnUNetTrainer)
                    and obj.__module__ == module.__name__):
                found[name] = obj
    return found
