"""Three-branch noise identification network built from nnU-Net plans with dynamic-network-architectures blocks.

One encoder, taken from the plans' architecture class (``PlainConvUNet``, ``ResidualEncoderUNet``, ...), feeds
three decoders of the same kind: ``revised`` (clean K-class logits), ``over`` and ``under`` (per-class
over/under-annotation logits, K channels each). The input is the image (C channels) followed by the imperfect label
as K-1 binary channels; the network re-binarizes those at 0.5 itself, so order-3 resampling in nnU-Net's
preprocessing and spatial augmentation cannot leak fractional label values into it.

Outputs:

- train mode: ``{'revised': ..., 'over': ..., 'under': ...}``, each a (B, K, X, Y[, Z]) tensor, or a list of them
  (highest resolution first) when deep supervision is on;
- eval mode, ``eval_output='fused'`` (default): one (B, K, X, Y[, Z]) tensor of log-probabilities of the fused
  revised label (:func:`nnunet_noisylabels.revision.nin.fusion.fuse_logits` with ``fusion``), a list per
  scale under deep supervision. This is what nnU-Net's predictor and validation consume;
- eval mode, ``eval_output='branches'``: (B, 3K, X, Y[, Z]) raw logits [K revised, K over, K under] (see
  :func:`~nnunet_noisylabels.revision.nin.fusion.split_branches`), for noise maps.

Method: Huang et al., Neural Networks 181 (2024) 106850 (our interpretation, see ``losses/noise_identification.py``).
"""
from __future__ import annotations

import pydoc
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nnunet_noisylabels.revision.nin.fusion import (
    BRANCHES,
    FUSION_RULES,
    downsample_label,
    fuse_logits,
    one_hot,
)
from nnunet_noisylabels.revision.nin.label_input import imperfect_label_from_channels

EVAL_OUTPUTS = ("fused", "branches")
DEFAULT_FUSION = "mean"


class NoiseIdentificationNetwork(nn.Module):
    """Shared encoder + three decoders (revised / over-annotation / under-annotation).

    Args:
        encoder: a dynamic-network-architectures encoder with ``return_skips=True``.
        decoders: ``{'revised', 'over', 'under'}`` -> decoder modules taking the encoder skips, K outputs each.
        num_image_channels: C; input channels [C, C+K-1) hold the imperfect label.
        num_classes: K, including background.
        fusion: revision rule, one of ``FUSION_RULES``.
    """

    def __init__(self, encoder: nn.Module, decoders: Mapping[str, nn.Module], num_image_channels: int,
                 num_classes: int, fusion: str = DEFAULT_FUSION):
        super().__init__()
        if set(decoders) != set(BRANCHES):
            raise ValueError(f"decoders must be exactly {BRANCHES}, got {sorted(decoders)}.")
        self.encoder = encoder
        # `decoder` is the revised head: nnU-Net's default set_deep_supervision_enabled touches `.decoder`
        self.decoder = decoders["revised"]
        self.decoder_over = decoders["over"]
        self.decoder_under = decoders["under"]
        self.num_image_channels = int(num_image_channels)
        self.num_classes = int(num_classes)
        self.fusion = fusion
        self.eval_output = "fused"

    @property
    def fusion(self) -> str:
        return self._fusion

    @fusion.setter
    def fusion(self, rule: str) -> None:
        if rule not in FUSION_RULES:
            raise ValueError(f"Unknown fusion rule {rule!r}; choose one of {FUSION_RULES}.")
        self._fusion = rule

    @property
    def deep_supervision(self) -> bool:
        return bool(self.decoder.deep_supervision)

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        for d in (self.decoder, self.decoder_over, self.decoder_under):
            d.deep_supervision = enabled

    def split_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C+K-1, ...) input -> (image (B, C, ...), imperfect label (B, 1, ...) int64)."""
        expected = self.num_image_channels + self.num_classes - 1
        if x.shape[1] != expected:
            raise ValueError(f"Input has {x.shape[1]} channels; expected {self.num_image_channels} image channels + "
                             f"{self.num_classes - 1} imperfect-label channels = {expected}.")
        return x[:, :self.num_image_channels], imperfect_label_from_channels(x[:, self.num_image_channels:])

    def forward(self, x: torch.Tensor):
        image, imperfect = self.split_input(x)
        label_channels = one_hot(imperfect, self.num_classes)[:, 1:].to(image.dtype)
        skips = self.encoder(torch.cat((image, label_channels), 1))
        outs = {"revised": self.decoder(skips), "over": self.decoder_over(skips),
                "under": self.decoder_under(skips)}
        if self.training:
            return outs
        deep = isinstance(outs["revised"], (list, tuple))
        per_scale = list(zip(*(outs[b] for b in BRANCHES))) if deep else [tuple(outs[b] for b in BRANCHES)]
        if self.eval_output == "branches":
            res = [torch.cat(heads, 1) for heads in per_scale]
        elif self.eval_output == "fused":
            res = []
            for rev, over, under in per_scale:
                y = one_hot(downsample_label(imperfect, rev.shape[2:]), self.num_classes)
                res.append(fuse_logits(rev, over, under, y, self.fusion).to(rev.dtype))
        else:
            raise ValueError(f"eval_output must be one of {EVAL_OUTPUTS}, got {self.eval_output!r}.")
        return res if deep else res[0]


def _locate(name: str):
    obj = pydoc.locate(name)
    if obj is None:
        raise ImportError(f"Cannot import {name!r} named in the plans; check the plans file and installed packages.")
    return obj


def build_noise_identification_network(arch_class_name: str, arch_kwargs: Mapping, arch_kwargs_req_import:
                                       Sequence[str], num_input_channels: int, num_classes: int,
                                       deep_supervision: bool = True, fusion: str = DEFAULT_FUSION,
                                       allow_init: bool = True) -> NoiseIdentificationNetwork:
    """Build the network from an nnU-Net configuration's ``architecture`` entry.

    Args:
        arch_class_name: e.g. ``dynamic_network_architectures.architectures.unet.PlainConvUNet``; the class must
            expose ``.encoder`` and ``.decoder`` (all nnU-Net default and ResEnc architectures do).
        arch_kwargs, arch_kwargs_req_import: the plans' ``network_arch_init_kwargs`` and the keys that hold
            importable names.
        num_input_channels: C + K - 1 (image channels plus imperfect-label channels).
        num_classes: K.
        deep_supervision: whether decoders return all scales.
        fusion: revision rule used in eval mode.
        allow_init: apply the architecture's ``initialize`` (He init) to all modules.

    Returns:
        the :class:`NoiseIdentificationNetwork`.
    """
    num_image_channels = num_input_channels - (num_classes - 1)
    if num_image_channels < 1:
        raise ValueError(f"{num_input_channels} input channels cannot hold >= 1 image channel plus "
                         f"{num_classes - 1} imperfect-label channels.")
    kwargs = dict(arch_kwargs)
    for key in arch_kwargs_req_import:
        if kwargs.get(key) is not None:
            kwargs[key] = _locate(kwargs[key]) if isinstance(kwargs[key], str) else kwargs[key]
    kwargs["deep_supervision"] = deep_supervision
    arch_cls = _locate(arch_class_name) if isinstance(arch_class_name, str) else arch_class_name
    base = arch_cls(input_channels=num_input_channels, num_classes=num_classes, **kwargs)
    if not (hasattr(base, "encoder") and hasattr(base, "decoder")):
        raise ValueError(f"{arch_class_name} has no .encoder/.decoder; the noise identification network needs an "
                         f"encoder-decoder architecture such as PlainConvUNet or ResidualEncoderUNet.")
    decoder_cls = type(base.decoder)
    n_conv_dec = kwargs["n_conv_per_stage_decoder"]
    nonlin_first = kwargs.get("nonlin_first", False)
    decoders = {"revised": base.decoder}
    for name in ("over", "under"):
        decoders[name] = decoder_cls(base.encoder, num_classes, n_conv_dec, deep_supervision, nonlin_first)
    net = NoiseIdentificationNetwork(base.encoder, decoders, num_image_channels, num_classes, fusion)
    if allow_init and hasattr(arch_cls, "initialize"):
        net.apply(arch_cls.initialize)
    return net
