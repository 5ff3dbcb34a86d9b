"""A module holding twin (or more) segmentation networks that nnU-Net can train, checkpoint and run as one.

Huang et al., Neural Networks 181 (2024) 106850, train two differently initialized networks side by side. nnU-Net's
predictor only knows one network per checkpoint (``build_network_architecture`` + strict ``load_state_dict`` +
``network(x)`` returning one tensor), so the twins live in one module:

- train mode: ``forward`` returns a tuple with every member's output (a tensor, or a list of tensors per
  deep-supervision scale);
- eval mode: ``forward`` returns the members' mean logits (per scale when deep supervision is on), which is what
  nnU-Net's predictor, ``--val``, ensembling and ``find_best_configuration`` consume. nnU-Net averages logits over
  folds the same way, so twins x folds is a plain average over all networks.

Shapes: B batch, C classes, X, Y[, Z] spatial. Pure torch, no nnU-Net import.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn


class _DecoderDeepSupervisionProxy:
    """Stands in for ``network.decoder`` so that nnU-Net-style ``mod.decoder.deep_supervision = x`` reaches all."""

    def __init__(self, owner: TwinNetwork):
        object.__setattr__(self, "_owner", owner)

    @property
    def deep_supervision(self) -> bool:
        return self._owner.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        self._owner.set_deep_supervision(enabled)

    def __getattr__(self, name):
        # anything else (e.g. decoder.stages) is read from the first member
        return getattr(self._owner.members[0].decoder, name)


class TwinNetwork(nn.Module):
    """Wraps N >= 1 member networks of identical architecture (2 for the twin trainer).

    Args:
        members: the member networks; each maps (B, C_in, X, Y[, Z]) to (B, C, X, Y[, Z]) logits or, with deep
            supervision, a list of logits at decreasing resolution.
        init_seeds: the seeds the members were initialized with (informative, not part of the state dict).
    """

    def __init__(self, members: Sequence[nn.Module], init_seeds: Sequence[int] | None = None):
        super().__init__()
        if len(members) < 1:
            raise ValueError("TwinNetwork needs at least one member network")
        self.members = nn.ModuleList(members)
        self.init_seeds = tuple(init_seeds) if init_seeds is not None else None
        # eval mode returns the mean unless this is set (per-network validation metrics)
        self.return_members = False

    @classmethod
    def from_builder(cls, build: Callable[[], nn.Module], seeds: Sequence[int]) -> TwinNetwork:
        """Build one member per seed with ``build()`` under ``torch.manual_seed(seed)``.

        The global RNG state is restored afterwards, so building (also in the predictor) does not shift nnU-Net's
        random streams.
        """
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"member seeds must differ, got {list(seeds)}")
        members = []
        devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())] \
            if torch.cuda.is_available() else []
        for seed in seeds:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(int(seed))
                members.append(build())
        return cls(members, seeds)

    @property
    def num_members(self) -> int:
        return len(self.members)

    # --- deep supervision -------------------------------------------------------------------------------------
    @property
    def deep_supervision(self) -> bool:
        return bool(self.members[0].decoder.deep_supervision)

    def set_deep_supervision(self, enabled: bool) -> None:
        """Switch deep supervision on or off in every member (nnU-Net's decoder flag)."""
        for m in self.members:
            m.decoder.deep_supervision = enabled

    @property
    def decoder(self) -> _DecoderDeepSupervisionProxy:
        """Compatibility with nnU-Net code that sets ``network.decoder.deep_supervision``."""
        return _DecoderDeepSupervisionProxy(self)

    @contextlib.contextmanager
    def members_output(self) -> Iterator[None]:
        """Within this context eval-mode ``forward`` returns every member's output instead of the mean."""
        old = self.return_members
        self.return_members = True
        try:
            yield
        finally:
            self.return_members = old

    # --- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        """Args: x (B, C_in, X, Y[, Z]). Returns a tuple of member outputs (train mode or ``members_output``) or
        their mean logits (eval mode), a tensor or a list per deep-supervision scale."""
        outputs = tuple([m(x) for m in self.members])
        if self.training or self.return_members:
            return outputs
        return mean_outputs(outputs)

    # --- export -----------------------------------------------------------------------------------------------
    def member_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """State dicts of the members as stand-alone networks (keys without the ``members.i.`` prefix)."""
        return split_member_state_dicts(self.state_dict())


def mean_outputs(outputs: Sequence):
    """Element-wise mean of member outputs: tensors, or lists of tensors (one per deep-supervision scale)."""
    if len(outputs) == 1:
        return outputs[0]
    if isinstance(outputs[0], (list, tuple)):
        return [torch.stack(scale).mean(0) for scale in zip(*outputs)]
    return torch.stack(outputs).mean(0)


def split_member_state_dicts(state_dict: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Split a :class:`TwinNetwork` state dict (``members.<i>.<key>``) into one state dict per member.

    Raises:
        ValueError: if the state dict does not come from a TwinNetwork.
    """
    per_member: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        parts = key.split(".", 2)
        if len(parts) < 3 or parts[0] != "members" or not parts[1].isdigit():
            raise ValueError(f"state dict key {key!r} is not from a TwinNetwork (expected 'members.<i>.<name>'); "
                             f"is this checkpoint from a NoiseRobustTrainer?")
        per_member.setdefault(int(parts[1]), {})[parts[2]] = value
    if sorted(per_member) != list(range(len(per_member))):
        raise ValueError(f"member indices {sorted(per_member)} are not contiguous from 0")
    return [per_member[i] for i in range(len(per_member))]
