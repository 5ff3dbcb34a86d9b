"""Every training-length variant of the plugin's trainers, generated in one place (nnU-Net's
``variants/training_length`` style).

A variant is ``<Trainer>_<suffix>``: the trainer with :class:`~nnunet_noisylabels.trainers.budget.BudgetMixin` in
front, so it differs only in its budget (and, for ``_debug``, in a few schedule settings that make a tiny run
meaningful). One suffix per meaning:

- ``_debug``: a few epochs of a few iterations, for tests and smoke runs (plumbing, not quality);
- ``_5epochs``, ``_50epochs``, ``_100epochs``: that many epochs of nnU-Net's usual 250 iterations;
- ``_budget``: epochs and iterations from ``nnUNet_nl_epochs`` / ``nnUNet_nl_iterations`` /
  ``nnUNet_nl_val_iterations``, so that every arm of a benchmark trains for exactly the same budget.

A new trainer gets variants by adding a line to :data:`VARIANTS`; a new length by adding it to :data:`LENGTHS`.
"""
from __future__ import annotations

from typing import Any, Mapping

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_noisylabels.baselines.trainers import (nnUNetTrainerCLSLR, nnUNetTrainerCoTeaching, nnUNetTrainerGCE,
                                                   nnUNetTrainerNRDice)
from nnunet_noisylabels.revision.nin.trainer import (NoiseIdentificationTrainer, NoiseIdentificationTrainer_labelDrop,
                                                     NoiseIdentificationTrainer_labelMorph,
                                                     NoiseIdentificationTrainer_labelShift)
from nnunet_noisylabels.robust.trainer import (NoiseRobustTrainer, NoiseRobustTrainer_noPeer,
                                               NoiseRobustTrainer_noSoftening, NoiseRobustTrainer_singleNet)
from nnunet_noisylabels.trainers.budget import BudgetMixin

# suffix -> class attributes of BudgetMixin (see there)
LENGTHS: dict[str, dict[str, Any]] = {
    "debug": {"budget_epochs": 4, "budget_iterations": 15, "budget_val_iterations": 2},
    "5epochs": {"budget_epochs": 5},
    "50epochs": {"budget_epochs": 50},
    "100epochs": {"budget_epochs": 100},
    "budget": {"budget_from_env": True},
}

# trainer -> {suffix: extra class attributes for this trainer's variant (merged over LENGTHS[suffix])}
VARIANTS: dict[type, dict[str, dict[str, Any]]] = {
    nnUNetTrainer: {"debug": {}, "budget": {}},
    nnUNetTrainerGCE: {"5epochs": {}, "budget": {}},
    nnUNetTrainerNRDice: {"5epochs": {}, "budget": {}},
    nnUNetTrainerCLSLR: {"5epochs": {}, "budget": {}},
    nnUNetTrainerCoTeaching: {"5epochs": {}, "budget": {}},
    NoiseRobustTrainer: {
        # 3 x 8 iterations with the peer term from the start and fixed seeds, so a test sees softening act
        "debug": {"budget_epochs": 3, "budget_iterations": 8, "network_init_seeds": (1, 2),
                  "budget_overrides": {"softening_rampup_fraction": 0.0, "softening_confidence_threshold": 0.5}},
        "5epochs": {}, "50epochs": {}, "100epochs": {}, "budget": {}},
    NoiseRobustTrainer_noSoftening: {"budget": {}},
    NoiseRobustTrainer_noPeer: {"budget": {}},
    NoiseRobustTrainer_singleNet: {"budget": {}},
    NoiseIdentificationTrainer: {"debug": {"budget_epochs": 2, "budget_iterations": 3}, "5epochs": {},
                                 "budget": {}},
    NoiseIdentificationTrainer_labelDrop: {"budget": {}},
    NoiseIdentificationTrainer_labelMorph: {"budget": {}},
    NoiseIdentificationTrainer_labelShift: {"budget": {}},
}


def make_variant(base: type, suffix: str, extra: Mapping[str, Any] | None = None) -> type:
    """The class ``<base>_<suffix>``: ``BudgetMixin`` + ``base`` with the attributes of ``LENGTHS[suffix]`` and
    ``extra``, defined in this module (so that nnU-Net and pickle find it by name)."""
    attrs = {**LENGTHS[suffix], **(extra or {})}
    doc = ", ".join(f"{k}={v}" for k, v in attrs.items())
    name = f"{base.__name__}_{suffix}"
    return type(name, (BudgetMixin, base), {**attrs, "__module__": __name__, "__qualname__": name,
                                            "__doc__": f"{base.__name__} with the budget '{suffix}' ({doc})."})


def _generate() -> dict[str, type]:
    classes = {}
    for base, suffixes in VARIANTS.items():
        for suffix, extra in suffixes.items():
            cls = make_variant(base, suffix, extra)
            classes[cls.__name__] = cls
    return classes


globals().update(_generate())
