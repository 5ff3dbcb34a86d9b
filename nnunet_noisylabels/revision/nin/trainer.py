"""``NoiseIdentificationTrainer``: trains the three-branch noise identification network on clean/imperfect pairs.

It runs on the auxiliary dataset built by ``nnUNetv2_nl_revise`` (see
``nnunet_noisylabels/revision/aux_dataset.py``): image channels followed by the imperfect label as K-1
``noNorm`` channels, clean labels as targets. nnU-Net plans, preprocesses and augments it as usual; the spatial
transforms move image and label channels together. Two protections keep the label channels binary:

- the intensity augmentations (noise, blur, brightness, contrast, low resolution, gamma) are restricted to the image
  channels (:class:`ImageChannelsOnlyTransform`): additive noise of variance up to 0.1 alone would flip ~10% of the
  label voxels at a 0.5 threshold;
- order-3 resampling (preprocessing and spatial augmentation) is undone by re-binarizing at 0.5 inside the network's
  forward, so training, validation and ``nnUNetv2_predict`` see the same binary input.

In eval mode the network returns the log-probabilities of the fused revision, so nnU-Net's final validation and
``nnUNetv2_predict -tr NoiseIdentificationTrainer`` write revised masks directly.

Method: Huang et al., Neural Networks 181 (2024) 106850 (our interpretation; see
``nnunet_noisylabels/revision/nin/fusion.py``).
"""
from __future__ import annotations

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import autocast, nn
from torch._dynamo import OptimizedModule

from nnunet_noisylabels.revision.nin.fusion import NoiseIdentificationLoss
from nnunet_noisylabels.revision.nin.label_input import (
    imperfect_label_from_channels,
    misregister_label_channels,
    perturb_label_channels,
)
from nnunet_noisylabels.revision.nin.network import (
    NoiseIdentificationNetwork,
    build_noise_identification_network,
)
from nnunet_noisylabels.revision.aux_dataset import label_channel_indices


class ImageChannelsOnlyTransform(BasicTransform):
    """Apply an image-only transform to the first ``num_image_channels`` channels; leave the others untouched.

    Args:
        transform: a batchgeneratorsv2 transform that only changes ``image``.
        num_image_channels: C; channels [C, ...) (the imperfect-label one-hot) pass through unchanged.
    """

    def __init__(self, transform: BasicTransform, num_image_channels: int):
        super().__init__()
        self.transform = transform
        self.num_image_channels = num_image_channels

    def apply(self, data_dict: dict, **params) -> dict:
        image = data_dict.get("image")
        if image is None:
            return data_dict
        c = self.num_image_channels
        rest = image[c:].clone()
        sub = dict(data_dict)
        sub["image"] = image[:c].clone()
        sub = self.transform(**sub)
        data_dict["image"] = torch.cat((sub["image"], rest), 0)
        return data_dict

    def __repr__(self):
        return f"{type(self).__name__}(C={self.num_image_channels}, transform={self.transform})"


def restrict_intensity_transforms(transforms: ComposeTransforms, num_image_channels: int) -> ComposeTransforms:
    """Wrap every image-only transform of a top-level pipeline (bare or inside ``RandomTransform``)."""
    out = []
    for t in transforms.transforms:
        if isinstance(t, ImageOnlyTransform):
            t = ImageChannelsOnlyTransform(t, num_image_channels)
        elif isinstance(t, RandomTransform) and isinstance(t.transform, ImageOnlyTransform):
            t = RandomTransform(ImageChannelsOnlyTransform(t.transform, num_image_channels), t.apply_probability)
        out.append(t)
    return ComposeTransforms(out)


class _HeadCountOverride:
    """A label manager that reports another number of output channels (the predictor allocates by it)."""

    def __init__(self, label_manager, num_heads: int):
        self._label_manager = label_manager
        self.num_segmentation_heads = num_heads

    def __getattr__(self, name):
        return getattr(self._label_manager, name)


def predict_branch_logits(predictor, data: torch.Tensor) -> torch.Tensor:
    """Raw logits of all three heads for one preprocessed case, through nnU-Net's sliding window (and mirroring).

    Args:
        predictor: an ``nnUNetPredictor`` initialized from a ``NoiseIdentificationTrainer*`` model folder.
        data: (C+K-1, X, Y[, Z]) preprocessed input (image channels, then the imperfect-label channels).

    Returns:
        (3K, X, Y[, Z]) float logits [K revised, K over, K under] in the preprocessed geometry; split them with
        ``nnunet_noisylabels.revision.nin.fusion.split_branches``.
    """
    net = predictor.network._orig_mod if isinstance(predictor.network, OptimizedModule) else predictor.network
    if not isinstance(net, NoiseIdentificationNetwork):
        raise ValueError(f"The predictor holds a {type(net).__name__}, not a NoiseIdentificationNetwork; "
                         f"initialize it from a NoiseIdentificationTrainer model folder.")
    label_manager, eval_output = predictor.label_manager, net.eval_output
    net.eval_output = "branches"
    predictor.label_manager = _HeadCountOverride(label_manager, 3 * label_manager.num_segmentation_heads)
    try:
        return predictor.predict_logits_from_preprocessed_data(data)
    finally:
        net.eval_output = eval_output
        predictor.label_manager = label_manager


class NoiseIdentificationTrainer(nnUNetTrainer):
    """nnU-Net trainer for the noise identification network (shared encoder, revised/over/under decoders).

    Hyperparameters (attributes): ``branch_loss_weights`` (revised, over, under); the training-time perturbation
    of the imperfect-label input (``label_drop_probability``, ``label_morph_probability``,
    ``label_morph_max_radius``; see :func:`perturb_label_channels`) and its misregistration
    (``label_shift_probability``, ``label_shift_max_rotation``, ``label_shift_max_fraction``,
    ``label_shift_per_class_probability``; see
    :func:`misregister_label_channels`), all off by default. The revision rule is the
    network's ``fusion`` attribute (default ``"mean"``); the noise maps come from ``network.eval_output =
    'branches'``.
    """

    label_drop_probability = 0.0
    label_morph_probability = 0.0
    label_morph_max_radius = 2
    label_shift_probability = 0.0
    label_shift_max_rotation = 15.0
    label_shift_max_fraction = 0.1
    label_shift_per_class_probability = 0.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_image_channels, self.label_channels = label_channel_indices(dataset_json)
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            raise ValueError("NoiseIdentificationTrainer supports plain K-class labels only (no regions, no ignore "
                             "label); remove 'regions_class_order'/'ignore' from dataset.json of the aux dataset.")
        self.branch_loss_weights = (1.0, 1.0, 1.0)
        self.nin_loss = None

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager,
                                   configuration_manager: ConfigurationManager,
                                   num_input_channels: int,
                                   num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Shared encoder of the plans' architecture plus three decoders; eval output = fused revision logits."""
        return build_noise_identification_network(
            configuration_manager.network_arch_class_name,
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels,
            num_output_channels,
            deep_supervision=enable_deep_supervision,
        )

    def _unwrapped_network(self) -> NoiseIdentificationNetwork:
        mod = self.network.module if self.is_ddp else self.network
        if isinstance(mod, OptimizedModule):
            mod = mod._orig_mod
        return mod

    def set_deep_supervision_enabled(self, enabled: bool):
        self._unwrapped_network().deep_supervision = enabled

    def _build_loss(self):
        # self.loss (nnU-Net's DC+CE on the fused output) stays the validation loss; training uses nin_loss
        revised_loss = super()._build_loss()
        noise_loss = DC_and_BCE_loss({}, {"batch_dice": self.configuration_manager.batch_dice, "do_bg": True,
                                          "smooth": 1e-5, "ddp": self.is_ddp},
                                     dice_class=MemoryEfficientSoftDiceLoss)
        if self.enable_deep_supervision:
            noise_loss = DeepSupervisionWrapper(noise_loss, revised_loss.weight_factors)
            train_revised = DeepSupervisionWrapper(revised_loss.loss, revised_loss.weight_factors)
        else:
            train_revised = revised_loss
        self.nin_loss = NoiseIdentificationLoss(train_revised, noise_loss, self.label_manager.num_segmentation_heads,
                                                self.branch_loss_weights)
        return revised_loss

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        transforms = super().get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=use_mask_for_norm, is_cascaded=is_cascaded, foreground_labels=foreground_labels,
            regions=regions, ignore_label=ignore_label)
        return restrict_intensity_transforms(transforms, self.num_image_channels)

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [i.to(self.device, non_blocking=True) for i in target]
        else:
            target = target.to(self.device, non_blocking=True)
        c = self.num_image_channels
        labels = given = data[:, c:]
        if self.label_drop_probability > 0 or self.label_morph_probability > 0:
            labels = perturb_label_channels(labels, self.label_drop_probability, self.label_morph_probability,
                                            self.label_morph_max_radius)
        if self.label_shift_probability > 0:
            labels = misregister_label_channels(labels, self.label_shift_probability, self.label_shift_max_rotation,
                                                self.label_shift_max_fraction, self.label_shift_per_class_probability)
        if labels is not given:
            data = torch.cat((data[:, :c], labels), 1)
        imperfect = imperfect_label_from_channels(labels)

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            loss = self.nin_loss(output, target, imperfect)

        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        comps = self.nin_loss.last_components
        return {"loss": loss.detach().cpu().numpy(), "loss_revised": np.float32(comps["revised"]),
                "loss_over": np.float32(comps["over"]), "loss_under": np.float32(comps["under"])}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        means = {k: float(np.mean([o[k] for o in train_outputs])) for k in ("loss_revised", "loss_over", "loss_under")}
        self.print_to_log_file("branch losses: " + ", ".join(f"{k[5:]} {v:.4f}" for k, v in means.items()))


class NoiseIdentificationTrainer_labelDrop(NoiseIdentificationTrainer):
    """The imperfect label is withheld (all zeros) for a third of the training samples.

    Not the default (BENCHMARKS.md, phase-1 variants, has its measured effect).
    """

    label_drop_probability = 1 / 3


class NoiseIdentificationTrainer_labelMorph(NoiseIdentificationTrainer):
    """The imperfect label is dilated or eroded by 1-2 voxels for half of the training samples.

    Not the default: the network grows less confident, so that in ``--method ensemble`` the clean-only member
    outweighs it (BENCHMARKS.md, phase-1 variants, has its measured effect).
    """

    label_morph_probability = 0.5


class NoiseIdentificationTrainer_labelShift(NoiseIdentificationTrainer):
    """The imperfect label is moved against the image (rotation <= 15 degrees, shift <= 10%) for a third of the samples.

    For labels that can be displaced as a whole or structure by structure; not the default, since it trusts
    correctly placed labels a little less (BENCHMARKS.md, phase-1 variants, has its measured effect). Half of the
    moved samples move each class on its own (no effect on a binary map). See :func:`misregister_label_channels`.
    """

    label_shift_probability = 1 / 3
    label_shift_per_class_probability = 0.5
