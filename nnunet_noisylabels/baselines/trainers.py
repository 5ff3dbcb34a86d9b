"""Classic noisy-label baselines as nnU-Net trainers: GCE, noise-robust Dice, confident learning + SLSR.

Each trainer changes one thing in ``nnUNetTrainer`` (its loss, and for SLSR what the loss sees) and keeps nnU-Net's
planning, augmentation, deep supervision, validation and inference. Use them like any trainer::

    nnUNetv2_train DATASET CONFIG FOLD -tr nnUNetTrainerGCE

with ``nnUNet_extTrainer`` pointing at ``nnunet_noisylabels/nnunet_ext``. The losses themselves are plain torch
(:mod:`nnunet_noisylabels.baselines.losses`). All of them need label-based (softmax) training; datasets with regions
are refused.

``nnUNetTrainerCoTeaching`` trains two networks (the plugin's :class:`~nnunet_noisylabels.robust.twin.TwinNetwork`,
shared with NoiseRobustTrainer) with pixel-wise small-loss selection (:mod:`nnunet_noisylabels.baselines.coteaching`).
"""
from __future__ import annotations

import os
import shutil
from os.path import isdir, isfile, join

import numpy as np
import torch
from torch import nn

from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context, softmax_helper_dim1
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_noisylabels.baselines.coteaching import coteaching_selection, forget_rate_schedule, voxel_cross_entropy
from nnunet_noisylabels.baselines.losses import (
    GeneralizedCrossEntropyLoss,
    NoiseRobustDiceLoss,
    SLSRCrossEntropyLoss,
    soft_cross_entropy,
)

#: environment variable naming the folder of issue maps for nnUNetTrainerCLSLR (default: see that class)
ISSUE_MAPS_ENV = "nnUNet_nl_issue_maps"


class WeightedLossSum(nn.Module):
    """``sum_i w_i * loss_i(logits, target)``; a ``forward(logits, target)`` module for DeepSupervisionWrapper."""

    def __init__(self, losses: list[nn.Module], weights: list[float]):
        super().__init__()
        self.losses = nn.ModuleList(losses)
        self.weights = tuple(weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.losses) if w != 0)


class _RobustLossTrainer(nnUNetTrainer):
    """Swaps the loss inside nnU-Net's deep-supervision wrapper; subclasses implement :meth:`build_inner_loss`."""

    def _build_loss(self):
        if self.label_manager.has_regions:
            raise ValueError(f"{self.__class__.__name__} supports label-based (softmax) training only, but this "
                             f"dataset.json defines regions. Use plain integer labels or nnUNetTrainer.")
        # nnU-Net's own deep-supervision weights, with our loss inside
        ref = super()._build_loss()
        inner = self.build_inner_loss()
        if isinstance(ref, DeepSupervisionWrapper):
            return DeepSupervisionWrapper(inner, ref.weight_factors)
        return inner

    def build_inner_loss(self) -> nn.Module:
        raise NotImplementedError

    def _dice_and_ce(self, weight_ce: float, weight_dice: float) -> DC_and_CE_loss:
        """nnU-Net's Dice/CE terms (with its ignore-label handling), one of them switched off by a zero weight."""
        return DC_and_CE_loss({'batch_dice': self.configuration_manager.batch_dice, 'smooth': 1e-5,
                               'do_bg': False, 'ddp': self.is_ddp}, {}, weight_ce=weight_ce,
                              weight_dice=weight_dice, ignore_label=self.label_manager.ignore_label,
                              dice_class=MemoryEfficientSoftDiceLoss)


class nnUNetTrainerGCE(_RobustLossTrainer):
    """nnU-Net with cross entropy replaced by generalized cross entropy (Dice + GCE).

    Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels",
    NeurIPS 2018. nnU-Net's Dice term is kept so that only the voxel-wise term changes; set ``weight_dice = 0`` in
    a subclass for GCE alone.

    Attributes:
        gce_q: GCE exponent (0.7, the paper's choice).
        weight_gce, weight_dice: term weights.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.gce_q = 0.7
        self.weight_gce = 1.0
        self.weight_dice = 1.0

    def build_inner_loss(self) -> nn.Module:
        return WeightedLossSum([self._dice_and_ce(weight_ce=0, weight_dice=1),
                                GeneralizedCrossEntropyLoss(self.gce_q, self.label_manager.ignore_label)],
                               [self.weight_dice, self.weight_gce])


class nnUNetTrainerNRDice(_RobustLossTrainer):
    """nnU-Net with its soft Dice replaced by the noise-robust Dice loss (NR-Dice + CE).

    Wang et al., "A Noise-Robust Framework for Automatic Segmentation of COVID-19 Pneumonia Lesions From CT Images",
    IEEE TMI 2020. The CE term is kept so that only the region term changes; set ``weight_ce = 0`` for NR-Dice
    alone (as in the paper).

    Attributes:
        nrdice_gamma: exponent (1.5, the paper's choice).
        weight_nrdice, weight_ce: term weights.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.nrdice_gamma = 1.5
        self.weight_nrdice = 1.0
        self.weight_ce = 1.0

    def build_inner_loss(self) -> nn.Module:
        nrdice = NoiseRobustDiceLoss(self.nrdice_gamma, do_bg=False,
                                     batch_dice=self.configuration_manager.batch_dice,
                                     ignore_label=self.label_manager.ignore_label)
        return WeightedLossSum([nrdice, self._dice_and_ce(weight_ce=1, weight_dice=0)],
                               [self.weight_nrdice, self.weight_ce])


class SLSRDiceCELoss(nn.Module):
    """nnU-Net's soft Dice + CE against SLSR soft targets (smoothed on flagged voxels, one-hot elsewhere).

    ``forward(logits, target)``: target (B, 2, ...) = (labels, issue flags), or (B, 1, ...) labels only.
    """

    def __init__(self, epsilon: float, batch_dice: bool, ignore_label: int | None, ddp: bool = False,
                 weight_ce: float = 1.0, weight_dice: float = 1.0):
        super().__init__()
        self.slsr = SLSRCrossEntropyLoss(epsilon, ignore_label)
        self.dc = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, batch_dice=batch_dice, do_bg=False,
                                              smooth=1e-5, ddp=ddp)
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        soft, mask = self.slsr.soft_targets(logits, target)
        dc = self.dc(logits, soft, loss_mask=mask) if self.weight_dice != 0 else 0
        ce = soft_cross_entropy(logits, soft, mask) if self.weight_ce != 0 else 0
        return self.weight_dice * dc + self.weight_ce * ce


class nnUNetTrainerCLSLR(_RobustLossTrainer):
    """Confident learning + spatial label smoothing (SLSR): soft targets on voxels flagged as label issues.

    Zhang et al., "Characterizing Label Errors: Confident Learning for Medical Image Segmentation", MICCAI 2020.

    The issue maps are READ, not computed: run a 5-fold cross-validation with ``--npz`` (e.g. ``nnUNetTrainer``),
    then ``nnUNetv2_nl_find_issues``, which writes ``$nnUNet_preprocessed/<dataset>/label_issues/issue_maps``; this
    trainer reads that folder (or the folder in the environment variable ``nnUNet_nl_issue_maps``). The maps are out
    of fold, which is what confident learning needs; computing them from the network being trained would flag only
    what it has not memorized yet.

    At the start of training every map is brought into the preprocessed geometry (transpose, crop, resample with
    nnU-Net's segmentation resampling) under ``<fold output>/issue_maps_preprocessed`` and travels through nnU-Net's
    data augmentation as a second segmentation channel (nnU-Net's mechanism for previous-stage segmentations, with
    the cascade itself off), so flags stay aligned with the labels at every deep-supervision scale.

    Attributes:
        slsr_epsilon: smoothing mass on flagged voxels (0.5: 0.75/0.25 targets with two classes).
        weight_ce, weight_dice: term weights.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded:
            raise ValueError(f"{self.__class__.__name__} uses the previous-stage segmentation slot for its issue "
                             f"maps and cannot train a cascade stage; use a non-cascaded configuration.")
        self.slsr_epsilon = 0.5
        self.weight_ce = 1.0
        self.weight_dice = 1.0

    def build_inner_loss(self) -> nn.Module:
        return SLSRDiceCELoss(self.slsr_epsilon, self.configuration_manager.batch_dice,
                              self.label_manager.ignore_label, self.is_ddp, self.weight_ce, self.weight_dice)

    def issue_maps_folder(self) -> str:
        """Where the issue maps written by ``nnUNetv2_nl_find_issues`` are read from."""
        return os.environ.get(ISSUE_MAPS_ENV) or join(self.preprocessed_dataset_folder_base, 'label_issues',
                                                      'issue_maps')

    def prepare_issue_maps(self) -> str:
        """Write every case's issue map in preprocessed geometry; return the folder."""
        from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetDatasetBlosc2

        src = self.issue_maps_folder()
        if not isdir(src):
            raise FileNotFoundError(
                f"No issue maps in {src}. {self.__class__.__name__} needs them: run a 5-fold cross-validation with "
                f"--npz (nnUNetv2_train DATASET CONFIG FOLD --npz for folds 0-4), then nnUNetv2_nl_find_issues, or "
                f"point {ISSUE_MAPS_ENV} at the folder.")
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        cases = self.dataset_class.get_identifiers(self.preprocessed_dataset_folder)
        ending = self.dataset_json['file_ending']
        missing = [c for c in cases if not isfile(join(src, c + ending))]
        if missing:
            raise FileNotFoundError(f"{len(missing)} case(s) have no issue map in {src}, e.g. {missing[0]}{ending}. "
                                    f"Rerun nnUNetv2_nl_find_issues on a cross-validation of all training cases.")
        dst = join(self.output_folder, 'issue_maps_preprocessed')
        tmp = dst + '.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        reader = self.plans_manager.image_reader_writer_class()
        transpose = self.plans_manager.transpose_forward
        dataset = self.dataset_class(self.preprocessed_dataset_folder, cases)
        n_flagged = 0
        for case in cases:
            _, seg, _, props = dataset.load_case(case)
            issues, _ = reader.read_seg(join(src, case + ending))
            # the same transpose, crop and resampling that nnU-Net's preprocessor applied to the labels
            issues = issues.transpose([0, *[i + 1 for i in transpose]])
            issues = issues[(slice(None), *bounding_box_to_slice(props['bbox_used_for_cropping']))]
            if issues.shape[1:] != tuple(props['shape_after_cropping_and_before_resampling']):
                raise ValueError(f"Issue map of {case} has shape {issues.shape[1:]} after cropping, the label "
                                 f"{tuple(props['shape_after_cropping_and_before_resampling'])}; was it written "
                                 f"for this dataset?")
            spacing = [props['spacing'][i] for i in transpose]
            target_spacing = list(self.configuration_manager.spacing)
            if len(target_spacing) < len(issues.shape[1:]):
                target_spacing = [spacing[0]] + target_spacing
            issues = self.configuration_manager.resampling_fn_seg(issues, seg.shape[1:], spacing, target_spacing)
            issues = (np.asarray(issues)[0] > 0).astype(np.int8)
            n_flagged += int(issues.sum())
            if issubclass(self.dataset_class, nnUNetDatasetBlosc2):
                nnUNetDatasetBlosc2.save_seg(issues, join(tmp, case))
            else:
                np.savez_compressed(join(tmp, case + '.npz'), seg=issues)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        self.print_to_log_file(f"SLSR: read issue maps from {src} ({len(cases)} cases, {n_flagged} flagged voxels "
                               f"after resampling), epsilon {self.slsr_epsilon}")
        return dst

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        # the data loader appends the map as a second segmentation channel when this folder is set
        self.folder_with_segs_from_previous_stage = self.prepare_issue_maps()
        super().on_train_start()

    def validation_step(self, batch: dict) -> dict:
        # validation loss and pseudo-Dice are measured against the labels alone (no smoothing)
        target = batch['target']
        labels = [t[:, :1] for t in target] if isinstance(target, list) else target[:, :1]
        return super().validation_step({**batch, 'target': labels})


class nnUNetTrainerCoTeaching(nnUNetTrainer):
    """Co-teaching: two networks, each trained on the voxels its peer finds easy (pixel-wise small-loss selection).

    Han et al., "Co-teaching: Robust Training of Deep Neural Networks with Extremely Noisy Labels", NeurIPS 2018;
    pixel-wise for segmentation as in PyMIC's co-teaching agent. At every deep-supervision scale each network's
    per-voxel cross entropy ranks the voxels; the ``1 - forget_rate`` smallest-loss fraction selected by network A
    is where network B is trained (CE, plus nnU-Net's soft Dice restricted to those voxels), and vice versa. The
    forget rate ramps linearly from 0 to ``coteaching_forget_rate`` over ``coteaching_num_gradual`` epochs.

    The two networks live in one :class:`~nnunet_noisylabels.robust.twin.TwinNetwork` (different random
    initializations; eval mode returns their mean logits), so checkpoints, ``--val`` and ``nnUNetv2_predict`` work
    unchanged and inference averages both networks.

    Attributes:
        coteaching_forget_rate: final fraction of voxels dropped (Han et al. set it to the noise rate; 0.2 here).
        coteaching_num_gradual: epochs of the linear ramp (10 in the paper); scaled down for short runs to at most
            ``num_epochs // 2``.
        coteaching_per_sample: rank voxels within each sample instead of within the batch.
        weight_dice: weight of the masked soft Dice term (0 for CE only, as in the paper).
    """

    network_init_seeds: tuple[int, int] | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions:
            raise ValueError(f"{self.__class__.__name__} supports label-based (softmax) training only, but this "
                             f"dataset.json defines regions. Use plain integer labels or nnUNetTrainer.")
        self.coteaching_forget_rate = 0.2
        self.coteaching_num_gradual = 10
        self.coteaching_per_sample = False
        self.weight_dice = 1.0

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Two plan networks with different initializations in one TwinNetwork (also what the predictor builds)."""
        from nnunet_noisylabels.robust.twin import TwinNetwork

        seeds = cls.network_init_seeds
        if seeds is None:
            base = int(torch.randint(0, 2 ** 31 - 2, (1,)).item())
            seeds = (base, base + 1)

        def build() -> nn.Module:
            return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                            num_output_channels, enable_deep_supervision)

        return TwinNetwork.from_builder(build, seeds)

    def _build_loss(self):
        # nnU-Net's loss for validation (on the twins' mean); training uses the co-teaching rule in train_step
        loss = super()._build_loss()
        self._ds_weights = tuple(loss.weight_factors) if isinstance(loss, DeepSupervisionWrapper) else (1.0,)
        self._masked_dice = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1,
                                                        batch_dice=self.configuration_manager.batch_dice,
                                                        do_bg=False, smooth=1e-5, ddp=self.is_ddp)
        return loss

    def current_forget_rate(self) -> float:
        """Forget rate of the current epoch (linear ramp, shortened to half the run for short budgets)."""
        gradual = min(self.coteaching_num_gradual, max(1, self.num_epochs // 2))
        return forget_rate_schedule(self.current_epoch, self.coteaching_forget_rate, gradual)

    def coteaching_losses(self, outputs_a: list[torch.Tensor], outputs_b: list[torch.Tensor],
                          targets: list[torch.Tensor], forget_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Deep-supervision-weighted co-teaching losses of both networks."""
        ignore = self.label_manager.ignore_label
        total_a, total_b = 0.0, 0.0
        for w, out_a, out_b, t in zip(self._ds_weights, outputs_a, outputs_b, targets):
            if w == 0:
                continue
            ce_a, mask = voxel_cross_entropy(out_a, t, ignore)
            ce_b, _ = voxel_cross_entropy(out_b, t, ignore)
            train_a, train_b = coteaching_selection(ce_a, ce_b, forget_rate, mask, self.coteaching_per_sample)
            for ce, out, sel, is_a in ((ce_a, out_a, train_a, True), (ce_b, out_b, train_b, False)):
                term = (ce * sel).sum() / sel.sum().clamp_min(1)
                if self.weight_dice != 0:
                    labels = t if ignore is None else torch.where(t == ignore, torch.zeros_like(t), t)
                    term = term + self.weight_dice * self._masked_dice(out, labels, loss_mask=sel.float())
                if is_a:
                    total_a = total_a + w * term
                else:
                    total_b = total_b + w * term
        return total_a, total_b

    def train_step(self, batch: dict) -> dict:
        from torch import autocast

        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        targets = [i.to(self.device, non_blocking=True) for i in target] if isinstance(target, list) \
            else [target.to(self.device, non_blocking=True)]
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context():
            out_a, out_b = self.network(data)
            out_a = out_a if isinstance(out_a, (list, tuple)) else [out_a]
            out_b = out_b if isinstance(out_b, (list, tuple)) else [out_b]
            loss_a, loss_b = self.coteaching_losses(out_a, out_b, targets, self.current_forget_rate())
            l = loss_a + loss_b
        if self.grad_scaler is not None:
            self.grad_scaler.scale(l).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            l.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        # the mean of both networks' losses, comparable to single-network trainers' logged loss
        return {'loss': (l.detach() / 2).cpu().numpy()}

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.print_to_log_file(f"co-teaching forget rate {self.current_forget_rate():.4f}")
