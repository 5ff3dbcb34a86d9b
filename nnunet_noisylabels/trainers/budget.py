"""Training-budget control for short runs, tests and benchmarks.

``nnUNetTrainer`` hard-codes 1000 epochs of 250 iterations. :class:`BudgetMixin` sets the budget from class
attributes (nnU-Net's ``nnUNetTrainer_5epochs`` style, but also iterations per epoch) and, for the ``*_budget``
variants, from environment variables so that every arm of a benchmark runs at exactly the same budget:

- ``nnUNet_nl_epochs``: number of epochs
- ``nnUNet_nl_iterations``: training iterations per epoch
- ``nnUNet_nl_val_iterations``: validation iterations per epoch
- ``nnUNet_nl_seed``: seed of torch, numpy and random, set before the networks are built (benchmarks repeat every
  arm with a few seeds to measure run-to-run spread; nnU-Net's data-augmentation workers still draw their own)
- ``nnUNet_nl_skip_final_validation=1``: with fold ``all``, skip nnU-Net's final validation (it would predict the
  training cases themselves, which measures nothing; benchmarks score a held-out test split instead)

Short runs still write ``checkpoint_latest.pth`` regularly (:func:`checkpoint_interval`): ``nnUNetv2_train ... --c``
resumes from it, and without it nnU-Net silently falls back to ``checkpoint_best.pth``, rewinding the training.
"""
from __future__ import annotations

import math
import os
import random

import numpy as np
import torch

SKIP_FINAL_VALIDATION_ENV = "nnUNet_nl_skip_final_validation"
SEED_ENV = "nnUNet_nl_seed"
BUDGET_ENV = {"num_epochs": "nnUNet_nl_epochs", "num_iterations_per_epoch": "nnUNet_nl_iterations",
              "num_val_iterations_per_epoch": "nnUNet_nl_val_iterations"}


def _positive_int(name: str, value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        v = 0
    if v < 1:
        raise ValueError(f"Environment variable {name}={value!r} must be a positive integer.")
    return v


def checkpoint_interval(num_epochs: int, save_every: int = 50) -> int:
    """Epochs between two ``checkpoint_latest.pth`` of a run of ``num_epochs`` epochs: ``ceil(num_epochs / 10)``,
    capped by nnU-Net's ``save_every`` (50), so that a run interrupted at any epoch resumes at most about a tenth of
    the run back (1000 epochs: every 50, as stock nnU-Net; 100: every 10; 5: every epoch).

    nnU-Net writes ``checkpoint_latest.pth`` after epoch ``e`` when ``(e + 1) % save_every == 0`` and ``e`` is not the
    last epoch (that one writes ``checkpoint_final.pth`` and removes ``checkpoint_latest.pth``); ``--c`` resumes from
    checkpoint_final, else checkpoint_latest, else checkpoint_best. With ``save_every`` >= ``num_epochs`` no
    checkpoint_latest would ever be written and ``--c`` would restart from the best epoch.
    """
    return max(1, min(int(save_every), math.ceil(int(num_epochs) / 10)))


class BudgetMixin:
    """Put before an nnUNetTrainer subclass in the bases to give it a fixed or environment-driven budget."""

    budget_epochs: int | None = None
    budget_iterations: int | None = None
    budget_val_iterations: int | None = None
    budget_from_env: bool = False
    # further attributes to set once the trainer's __init__ has run (e.g. a debug variant's schedule)
    budget_overrides: dict = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.budget_from_env and os.environ.get(SEED_ENV):
            seed = int(os.environ[SEED_ENV])
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        for attr, value in (("num_epochs", self.budget_epochs), ("num_iterations_per_epoch", self.budget_iterations),
                            ("num_val_iterations_per_epoch", self.budget_val_iterations)):
            if value is not None:
                setattr(self, attr, value)
            if self.budget_from_env and os.environ.get(BUDGET_ENV[attr]):
                setattr(self, attr, _positive_int(BUDGET_ENV[attr], os.environ[BUDGET_ENV[attr]]))
        # short runs: checkpoint_latest.pth about ten times per run, so that --c resumes from a recent epoch
        self.save_every = checkpoint_interval(self.num_epochs, self.save_every)
        for attr, value in self.budget_overrides.items():
            setattr(self, attr, value)

    def perform_actual_validation(self, save_probabilities: bool = False):
        skip = os.environ.get(SKIP_FINAL_VALIDATION_ENV, "").lower() in ("1", "true", "yes")
        if self.budget_from_env and skip and self.fold == "all":
            self.print_to_log_file(f"Final validation skipped ({SKIP_FINAL_VALIDATION_ENV} is set and fold 'all' "
                                   f"validates on the training cases).")
            return
        super().perform_actual_validation(save_probabilities)
