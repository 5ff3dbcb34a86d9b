"""NoiseRobustTrainer: twin networks with label softening, trained through nnU-Net's own pipeline.

Phase 2 of Huang et al., "Toward high-quality pseudo masks from noisy or weak annotations for robust medical image
segmentation", Neural Networks 181 (2024) 106850. Two networks are built from the same plans with different seeds
and trained side by side on the same batches; each one learns from soft targets derived from the (pseudo) labels
and the detached prediction of its peer (:func:`nnunet_noisylabels.robust.soft_targets.soften_targets`;
the label part is computed once per batch and shared by both networks).

Usage: ``nnUNetv2_train DATASET CONFIG FOLD -tr NoiseRobustTrainer`` (with ``nnUNet_extTrainer`` pointing at
``nnunet_noisylabels/nnunet_ext``). Both networks live in one :class:`TwinNetwork`, whose eval-mode output is their
mean logits, so checkpoints, ``--val``, ``nnUNetv2_predict``, ensembling and ``nnUNetv2_find_best_configuration``
work unchanged. ``nnUNetv2_nl_export`` writes a model folder that stock nnU-Net runs without this plugin.

DDP: the wrapper is one module with one forward per step, so nnU-Net's ``DDP(network)`` and SyncBatchNorm
conversion apply to it as to a single network; every parameter of both members receives a gradient each step (the
peer term is detached, not skipped), and the deep-supervision weights are nnU-Net's own (including its
``weights[-1] = 1e-6`` DDP workaround), so no unused-parameter error is introduced.
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch
import torch.distributed as dist
from torch import autocast, nn
from torch._dynamo import OptimizedModule

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_noisylabels.revision.base import DATASET_JSON_KEY
from nnunet_noisylabels.robust.soft_targets import (SoftDiceCELoss, fill_band, harden, label_targets, mix_peer,
                                                    per_sample, sigmoid_rampup)
from nnunet_noisylabels.robust.twin import TwinNetwork, mean_outputs


class NoiseRobustTrainer(nnUNetTrainer):
    """Twin networks + label softening (see module docstring).

    Class attributes (read by the static network builder, which the predictor also calls):
        num_networks: members in the :class:`TwinNetwork` (2; 1 for the single-network ablation).
        network_init_seeds: one seed per member, or None to draw distinct seeds from torch's global RNG (which
            nnU-Net does not seed, like its own random initialization).

    Softening hyperparameters (instance attributes set in ``__init__``; override in a subclass):
        enable_softening: False trains every member on the hard labels (targets equal the one-hot labels).
        softening_peer_weight: maximum weight of the peer's prediction where it confidently disagrees with the label.
        softening_confidence_threshold: peer confidence below which the peer is ignored.
        softening_boundary_eps: weight of the local class frequencies near label boundaries (no ramp).
        softening_boundary_kernel: window size (voxels, odd) of the boundary softening, at every DS scale.
        softening_rampup_fraction: the peer weight follows ``exp(-5 (1 - t)^2)`` over this fraction of
            ``num_epochs`` (0 at epoch 0, full afterwards); 0 disables the ramp.
        band_peer_weight: loss weight (ramped as the peer weight) of the voxels that carry the ignore label, e.g.
            the uncertain band of ``nnUNetv2_nl_revise --uncertain_band``: there each member learns from its peer's
            prediction (cross pseudo-supervision) instead of from nothing; 0 leaves them ignored, as nnU-Net does.
        grad_clip_norm: gradient-norm clip applied to each member separately (nnU-Net's 12).

    Clean pairs: the cases that dataset.json names in ``["nnunet_noisylabels"]["clean_cases"]`` (a dataset written by
    ``nnUNetv2_nl_revise -o``) keep hard one-hot targets: no boundary softening, no peer term.
    """

    num_networks: int = 2
    network_init_seeds: tuple[int, ...] | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions:
            raise ValueError(f"{self.__class__.__name__} supports label-based (softmax) training only, but this "
                             f"dataset.json defines regions. Use a dataset.json with plain integer labels, or "
                             f"train with nnUNetTrainer.")
        self.enable_softening = True
        self.softening_peer_weight = 0.5
        self.softening_confidence_threshold = 0.8
        self.softening_boundary_eps = 0.1
        self.softening_boundary_kernel = 3
        self.softening_rampup_fraction = 0.2
        self.band_peer_weight = 1.0
        self.grad_clip_norm = 12.0
        self.clean_cases = frozenset(dataset_json.get(DATASET_JSON_KEY, {}).get("clean_cases", []))
        self._register_log_keys()

    # --- network ----------------------------------------------------------------------------------------------
    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """A :class:`TwinNetwork` of ``num_networks`` plan networks (also what the predictor builds)."""
        seeds = cls.network_init_seeds
        if seeds is None:
            base = int(torch.randint(0, 2 ** 31 - 1 - cls.num_networks, (1,)).item())
            seeds = tuple(base + i for i in range(cls.num_networks))
        if len(seeds) != cls.num_networks:
            raise ValueError(f"{cls.__name__}.network_init_seeds needs {cls.num_networks} seeds, got {seeds}")

        def build() -> nn.Module:
            return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                            num_output_channels, enable_deep_supervision)

        return TwinNetwork.from_builder(build, seeds)

    def _twin(self) -> TwinNetwork:
        mod = self.network.module if self.is_ddp else self.network
        if isinstance(mod, OptimizedModule):
            mod = mod._orig_mod
        return mod

    def set_deep_supervision_enabled(self, enabled: bool):
        self._twin().set_deep_supervision(enabled)

    def initialize(self):
        super().initialize()
        self.print_to_log_file(f"{self.__class__.__name__}: {self._twin().num_members} network(s), init seeds "
                               f"{self._twin().init_seeds}; softening: {self.softening_config()}")

    def softening_config(self) -> dict:
        """The softening rule's hyperparameters, as logged and documented."""
        return {"enable_softening": self.enable_softening, "peer_weight": self.softening_peer_weight,
                "confidence_threshold": self.softening_confidence_threshold,
                "boundary_eps": self.softening_boundary_eps, "boundary_kernel": self.softening_boundary_kernel,
                "rampup_fraction": self.softening_rampup_fraction, "band_peer_weight": self.band_peer_weight,
                "ignore_label": self.label_manager.ignore_label, "clean_cases_with_hard_targets": len(self.clean_cases)}

    # --- loss and targets -------------------------------------------------------------------------------------
    def _build_loss(self):
        # nnU-Net's own Dice (compiled when nnU-Net compiles) and deep-supervision weights, with soft targets
        ref = super()._build_loss()
        base = ref.loss if isinstance(ref, DeepSupervisionWrapper) else ref
        loss = SoftDiceCELoss(base.dc, weight_ce=base.weight_ce, weight_dice=base.weight_dice)
        if isinstance(ref, DeepSupervisionWrapper):
            self._ds_weights = tuple(ref.weight_factors)
            return DeepSupervisionWrapper(loss, ref.weight_factors)
        self._ds_weights = (1.0,)
        return loss

    def _rampup(self) -> float:
        """The ramp-up of the peer's weights this epoch (0 without softening)."""
        if not self.enable_softening:
            return 0.0
        return sigmoid_rampup(self.current_epoch, self.softening_rampup_fraction * self.num_epochs)

    def current_peer_weight(self) -> float:
        """Peer weight of the current epoch: ``softening_peer_weight`` times the ramp-up (0 without softening)."""
        return self.softening_peer_weight * self._rampup()

    def current_band_weight(self) -> float:
        """Loss weight of the ignored voxels this epoch (their target: the peer), ramped as the peer weight."""
        if self.label_manager.ignore_label is None:
            return 0.0
        return self.band_peer_weight * self._rampup()

    def hard_samples(self, keys) -> torch.Tensor | None:
        """(B,) bool: which samples of a batch are clean pairs (hard targets), from the batch's case keys."""
        if not self.clean_cases or keys is None:
            return None
        return torch.tensor([str(k) in self.clean_cases for k in keys], dtype=torch.bool, device=self.device)

    def label_targets(self, targets: List[torch.Tensor], check_labels: bool = True,
                      hard: torch.Tensor | None = None) -> list:
        """Boundary-smoothed label targets at every deep-supervision scale, shared by all members (None where a scale
        has no loss weight); one-hot for the ``hard`` samples. ``check_labels`` validates the label range on the
        full-resolution target only."""
        eps = self.softening_boundary_eps if self.enable_softening else 0.0
        out = []
        for s, t in enumerate(targets):
            if s < len(self._ds_weights) and self._ds_weights[s] == 0:
                out.append(None)
                continue
            q, labels, m = label_targets(t, self.label_manager.num_segmentation_heads, eps,
                                         self.softening_boundary_kernel, self.label_manager.ignore_label,
                                         check_labels=check_labels and s == 0)
            out.append((harden(q, labels, hard), labels, m, hard))
        return out

    def member_targets(self, base: list, peer_probs: List[torch.Tensor | None] | None, peer_weight: float,
                       band_weight: float = 0.0):
        """One member's soft targets, loss masks (float weights where the band is filled) and peer weights per scale,
        from :meth:`label_targets`: the peer term where the label is known (never on hard samples), the peer's
        prediction in the ignored voxels (weight ``band_weight``)."""
        soft, masks, weights = [], [], []
        for s, b in enumerate(base):
            if b is None:
                soft.append(None), masks.append(None), weights.append(None)
                continue
            q, labels, m, hard = b
            peer = None if peer_probs is None else peer_probs[s]
            known = m
            if hard is not None:
                soft_samples = per_sample(~hard, labels.ndim)
                known = soft_samples if m is None else m & soft_samples
            q, w = mix_peer(q, labels, peer, peer_weight, self.softening_confidence_threshold, known)
            q, mask = fill_band(q, m, peer, band_weight)
            soft.append(q), masks.append(mask), weights.append(w)
        return soft, masks, weights

    def make_soft_targets(self, targets: List[torch.Tensor], peer_probs: List[torch.Tensor | None] | None,
                          peer_weight: float, check_labels: bool = True, band_weight: float = 0.0,
                          hard: torch.Tensor | None = None):
        """Soft targets, loss masks and peer weights at every deep-supervision scale (None where unused)."""
        return self.member_targets(self.label_targets(targets, check_labels, hard), peer_probs, peer_weight,
                                   band_weight)

    def _apply_loss(self, output: List[torch.Tensor], soft, masks):
        if self.enable_deep_supervision:
            return self.loss(output, soft, masks)
        return self.loss(output[0], soft[0], masks[0])

    # --- training ---------------------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict:
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        targets = [i.to(self.device, non_blocking=True) for i in target] if isinstance(target, list) \
            else [target.to(self.device, non_blocking=True)]

        self.optimizer.zero_grad(set_to_none=True)
        peer_weight, band_weight = self.current_peer_weight(), self.current_band_weight()
        with autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context():
            outputs = [o if isinstance(o, (list, tuple)) else [o] for o in self.network(data)]
            n = len(outputs)
            with torch.no_grad():
                probs = None
                if peer_weight > 0 or band_weight > 0:
                    probs = [[torch.softmax(s.detach().float(), 1)
                              if s_i >= len(self._ds_weights) or self._ds_weights[s_i] != 0 else None
                              for s_i, s in enumerate(o)] for o in outputs]
            # the label part is the same for every member
            base = self.label_targets(targets, hard=self.hard_samples(batch.get('keys')))
            losses, override = [], []
            for i in range(n):
                # member i learns from member i+1's prediction (itself when it has no twin)
                soft, masks, ws = self.member_targets(base, None if probs is None else probs[(i + 1) % n],
                                                      peer_weight, band_weight)
                losses.append(self._apply_loss(outputs[i], soft, masks))
                override.append((ws[0] > 0).float().mean())
            l = sum(losses)
            m0 = base[0][2]
            band = (~m0).float().mean() if m0 is not None and band_weight > 0 else torch.zeros((), device=l.device)

        members = self._twin().members
        if self.grad_scaler is not None:
            self.grad_scaler.scale(l).backward()
            self.grad_scaler.unscale_(self.optimizer)
            for m in members:
                torch.nn.utils.clip_grad_norm_(m.parameters(), self.grad_clip_norm)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            l.backward()
            for m in members:
                torch.nn.utils.clip_grad_norm_(m.parameters(), self.grad_clip_norm)
            self.optimizer.step()

        with torch.no_grad():
            agree = (outputs[0][0].argmax(1) == outputs[-1][0].argmax(1)).float().mean()
            stats = torch.stack([l.detach() / n, *[x.detach() for x in losses], *override, agree,
                                 band.to(l.device)]).cpu().numpy()
        out = {'loss': stats[0]}
        for i in range(n):
            out[f'loss_net_{i}'] = stats[1 + i]
            out[f'peer_override_net_{i}'] = stats[1 + n + i]
        out['train_agreement'] = stats[-2]
        out['peer_band_fraction'] = stats[-1]
        return out

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        n = self._twin().num_members
        for key in [f'loss_net_{i}' for i in range(n)] + [f'peer_override_net_{i}' for i in range(n)] + \
                   ['train_agreement', 'peer_band_fraction']:
            self.logger.log(key, self._mean_over_workers(outputs[key]), self.current_epoch)
        self.logger.log('peer_weight', self.current_peer_weight(), self.current_epoch)
        self.logger.log('band_weight', self.current_band_weight(), self.current_epoch)

    # --- validation -------------------------------------------------------------------------------------------
    def validation_step(self, batch: dict) -> dict:
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        targets = [i.to(self.device, non_blocking=True) for i in target] if isinstance(target, list) \
            else [target.to(self.device, non_blocking=True)]

        twin = self._twin()
        with autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context():
            with twin.members_output():
                members = [o if isinstance(o, (list, tuple)) else [o] for o in self.network(data)]
            del data
            mean = mean_outputs(members)
            # validation loss against the hard labels, as nnU-Net's
            hard, masks, _ = self._hard_targets(targets)
            l = self._apply_loss(mean, hard, masks)

        target0 = targets[0]
        mask = None
        if self.label_manager.has_ignore_label:
            mask = (target0 != self.label_manager.ignore_label).float()
            target0 = torch.where(mask.bool(), target0, torch.zeros_like(target0))

        out = {'loss': l.detach().cpu().numpy()}
        out.update(self._hard_counts(mean[0], target0, mask, ''))
        for i, m in enumerate(members):
            out.update(self._hard_counts(m[0], target0, mask, f'_net_{i}'))
        if len(members) > 1:
            # agreement: Dice of member 0's prediction against member 1's
            out.update(self._hard_counts(members[0][0], members[1][0].argmax(1, keepdim=True), mask, '_agree'))
        return out

    def _hard_targets(self, targets):
        saved = self.enable_softening
        self.enable_softening = False
        try:
            return self.make_soft_targets(targets, None, 0.0)
        finally:
            self.enable_softening = saved

    def _hard_counts(self, logits: torch.Tensor, target: torch.Tensor, mask, suffix: str) -> dict:
        axes = [0] + list(range(2, logits.ndim))
        onehot = torch.zeros(logits.shape, device=logits.device, dtype=torch.float16)
        onehot.scatter_(1, logits.argmax(1)[:, None], 1)
        tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=axes, mask=mask)
        # background dropped, as nnU-Net does for its pseudo Dice
        return {f'tp_hard{suffix}': tp.detach().cpu().numpy()[1:], f'fp_hard{suffix}': fp.detach().cpu().numpy()[1:],
                f'fn_hard{suffix}': fn.detach().cpu().numpy()[1:]}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        super().on_validation_epoch_end(val_outputs)
        outputs = collate_outputs(val_outputs)
        n = self._twin().num_members
        suffixes = [f'_net_{i}' for i in range(n)] + (['_agree'] if n > 1 else [])
        for suffix in suffixes:
            tp, fp, fn = (self._sum_over_workers(np.sum(outputs[f'{k}{suffix}'], 0)) for k in ('tp_hard', 'fp_hard',
                                                                                                'fn_hard'))
            dice = np.nanmean([2 * i / (2 * i + j + k) for i, j, k in zip(tp, fp, fn)])
            key = 'agreement_fg_dice' if suffix == '_agree' else f'mean_fg_dice{suffix}'
            self.logger.log(key, float(dice), self.current_epoch)

    # --- logging ----------------------------------------------------------------------------------------------
    def _extra_log_keys(self) -> list[str]:
        n = self.num_networks
        keys = [f'loss_net_{i}' for i in range(n)] + [f'peer_override_net_{i}' for i in range(n)] + \
            ['train_agreement', 'peer_weight', 'peer_band_fraction', 'band_weight'] + \
            [f'mean_fg_dice_net_{i}' for i in range(n)]
        return keys + (['agreement_fg_dice'] if n > 1 else [])

    def _register_log_keys(self):
        # nnU-Net's local logger only accepts known keys and plots up to the shortest list: keep one value per epoch
        logs = self.logger.local_logger.my_fantastic_logging
        n_epochs = len(logs['train_losses'])
        for k in self._extra_log_keys():
            logs.setdefault(k, [float('nan')] * n_epochs)

    def _mean_over_workers(self, values) -> float:
        value = float(np.mean(values))
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, value)
            value = float(np.mean(gathered))
        return value

    def _sum_over_workers(self, arr: np.ndarray) -> np.ndarray:
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, arr)
            arr = np.vstack([i[None] for i in gathered]).sum(0)
        return arr

    def on_epoch_end(self):
        n = self._twin().num_members
        get = lambda k: round(float(self.logger.get_value(k, step=-1)), 4)
        self.print_to_log_file('per-network train loss', [get(f'loss_net_{i}') for i in range(n)],
                               'pseudo dice', [get(f'mean_fg_dice_net_{i}') for i in range(n)])
        self.print_to_log_file('peer weight', get('peer_weight'), 'peer override fraction',
                               [get(f'peer_override_net_{i}') for i in range(n)],
                               'band weight', get('band_weight'), 'band fraction', get('peer_band_fraction'),
                               *(['agreement dice', get('agreement_fg_dice')] if n > 1 else []))
        super().on_epoch_end()

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self._register_log_keys()


class NoiseRobustTrainer_noSoftening(NoiseRobustTrainer):
    """Ablation: twin networks trained on the hard (pseudo) labels; inference still averages both."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_softening = False


class NoiseRobustTrainer_noPeer(NoiseRobustTrainer):
    """Ablation: no peer anywhere (no peer term, ignored voxels stay ignored); boundary softening, twin networks and
    hard clean pairs as :class:`NoiseRobustTrainer`."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.softening_peer_weight = 0.0
        self.band_peer_weight = 0.0


class NoiseRobustTrainer_singleNet(NoiseRobustTrainer):
    """Ablation: one network with softening; its peer is its own detached prediction (self-softening)."""

    num_networks = 1
