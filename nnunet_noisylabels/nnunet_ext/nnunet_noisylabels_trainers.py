"""Entry point for nnU-Net's external-trainer lookup (environment variable ``nnUNet_extTrainer``).

nnU-Net imports the modules of that folder as top-level modules and looks for the requested class name in them;
this module re-exports every trainer class of ``nnunet_noisylabels.trainers``. Keep it free of relative imports.
This folder deliberately has no ``__init__.py``.
"""
from nnunet_noisylabels.trainers import all_trainer_classes

globals().update(all_trainer_classes())
