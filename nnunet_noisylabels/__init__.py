"""nnunet-noisylabels: noisy- and weak-label segmentation for nnU-Net v2.

Phase 1 revises imperfect labels into pseudo masks with a noise identification network learned from a few clean
pairs (``nnUNetv2_nl_revise``); phase 2 trains nnU-Net robustly on them (``-tr NoiseRobustTrainer``).
Method: Huang et al., "Toward high-quality pseudo masks from noisy or weak annotations for robust medical image
segmentation", Neural Networks 181 (2024) 106850.

This module stays import-light (no torch, no nnunetv2): it runs at interpreter start-up through the
installed ``.pth`` hook that registers the trainers with nnU-Net (see ``_autoenv``).
"""
from __future__ import annotations

__version__ = "0.1.0"

NNUNET_MIN_VERSION = "2.8.1"
NNUNET_MAX_VERSION_EXCL = "2.9"


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
        if digits != part:
            break
    return tuple(out)


def check_nnunet_version(installed: str | None = None) -> str:
    """Return the installed nnunetv2 version; raise RuntimeError with instructions if it is unsupported."""
    if installed is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("nnunetv2")
        except PackageNotFoundError:
            raise RuntimeError("nnunetv2 is not installed. Install it with "
                               f"`pip install 'nnunetv2>={NNUNET_MIN_VERSION},<{NNUNET_MAX_VERSION_EXCL}'`.") from None
    v = _version_tuple(installed)
    if not (_version_tuple(NNUNET_MIN_VERSION) <= v < _version_tuple(NNUNET_MAX_VERSION_EXCL)):
        raise RuntimeError(
            f"nnunet-noisylabels needs nnunetv2 >= {NNUNET_MIN_VERSION}, < {NNUNET_MAX_VERSION_EXCL} (external trainer "
            f"lookup via nnUNet_extTrainer exists from 2.8); found {installed}. Fix it with "
            f"`pip install 'nnunetv2>={NNUNET_MIN_VERSION},<{NNUNET_MAX_VERSION_EXCL}'`.")
    return installed
