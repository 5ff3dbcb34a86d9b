"""Channel convention of the auxiliary nnU-Net dataset that the noise identification network trains on.

The auxiliary dataset feeds the imperfect label to the network as extra input channels:

- ``imagesTr/CASE_0000 .. CASE_{C-1:04d}``: the C original image channels;
- ``imagesTr/CASE_{C+k-1:04d}`` for k = 1..K-1: a binary mask (0/1, same file format as the images) of
  ``imperfect label == k``; background is implied by all of them being 0;
- ``dataset.json``: ``channel_names`` marks the label channels ``"noNorm"`` and two extra keys say where they are,
  ``"nl_num_image_channels": C`` and ``"nl_label_channels": [C, ..., C+K-2]``;
- ``labelsTr/``: the clean labels of the clean pairs; ``imagesTs/``: the cases to revise, same channel layout.

Pure functions only (no nnunetv2 import), shared by the revise command and ``NoiseIdentificationTrainer``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

LABEL_CHANNEL_NORMALIZATION = "noNorm"
KEY_NUM_IMAGE_CHANNELS = "nl_num_image_channels"
KEY_LABEL_CHANNELS = "nl_label_channels"


def imperfect_label_to_channels(seg: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """One-hot encode an imperfect label into K-1 binary masks (background dropped).

    Args:
        seg: integer label map, any shape (e.g. (X, Y[, Z]) or nnU-Net's (1, X, Y[, Z])), values in [0, K).
        num_classes: K, the number of classes including background (``len(dataset_json['labels'])``).

    Returns:
        K-1 uint8 arrays of ``seg``'s shape; entry k-1 is 1 where ``seg == k``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background plus at least one structure), got {num_classes}.")
    seg = np.asarray(seg)
    if seg.size and not np.issubdtype(seg.dtype, np.integer):
        rounded = np.rint(seg)
        if not np.array_equal(rounded, seg):
            raise ValueError("The imperfect label holds non-integer values; pass an integer label map.")
        seg = rounded.astype(np.int64)
    if seg.size:
        lo, hi = int(seg.min()), int(seg.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"The imperfect label holds values in [{lo}, {hi}] but num_classes={num_classes} allows only "
                f"[0, {num_classes - 1}]. Check the dataset.json 'labels' entry (ignore labels are not supported "
                f"in imperfect labels)."
            )
    return [(seg == k).astype(np.uint8) for k in range(1, num_classes)]


def label_channel_names(image_channel_names: Mapping[str, str] | Sequence[str], num_classes: int) -> dict[str, str]:
    """``channel_names`` of the auxiliary dataset: the image channels, then K-1 ``noNorm`` label channels.

    Args:
        image_channel_names: the original dataset's ``channel_names`` (a dict ``{"0": "CT", ...}`` or a list).
        num_classes: K, including background.

    Returns:
        a dict ``{"0": ..., ..., str(C + K - 2): "noNorm"}``.
    """
    if isinstance(image_channel_names, Mapping):
        names = [image_channel_names[k] for k in sorted(image_channel_names, key=int)]
    else:
        names = list(image_channel_names)
    out = {str(i): n for i, n in enumerate(names)}
    for k in range(1, num_classes):
        out[str(len(names) + k - 1)] = LABEL_CHANNEL_NORMALIZATION
    return out


def aux_dataset_json_keys(num_image_channels: int, num_classes: int) -> dict[str, object]:
    """The extra dataset.json keys that mark the label channels of an auxiliary dataset."""
    return {
        KEY_NUM_IMAGE_CHANNELS: int(num_image_channels),
        KEY_LABEL_CHANNELS: list(range(num_image_channels, num_image_channels + num_classes - 1)),
    }


def label_channel_indices(dataset_json: Mapping) -> tuple[int, list[int]]:
    """Read where the imperfect-label channels sit in an auxiliary dataset.

    Args:
        dataset_json: the auxiliary dataset's dataset.json as a dict.

    Returns:
        (C, [C, ..., C+K-2]): the number of image channels and the channel indices of the label one-hot.
    """
    if KEY_NUM_IMAGE_CHANNELS not in dataset_json or KEY_LABEL_CHANNELS not in dataset_json:
        raise ValueError(
            f"dataset.json lacks '{KEY_NUM_IMAGE_CHANNELS}' / '{KEY_LABEL_CHANNELS}': this is not an auxiliary "
            f"noise-identification dataset. Build one with nnUNetv2_nl_revise (it appends the imperfect label as "
            f"extra input channels)."
        )
    num_image = int(dataset_json[KEY_NUM_IMAGE_CHANNELS])
    label_channels = [int(i) for i in dataset_json[KEY_LABEL_CHANNELS]]
    channel_names = dataset_json.get("channel_names", dataset_json.get("modality"))
    labels = dataset_json.get("labels")
    num_classes = len([k for k in labels if k != "ignore"]) if labels is not None else None
    expected = list(range(num_image, num_image + len(label_channels)))
    if num_image < 1 or label_channels != expected:
        raise ValueError(
            f"dataset.json '{KEY_LABEL_CHANNELS}'={label_channels} must be the consecutive indices {expected} "
            f"following the {num_image} image channels."
        )
    if num_classes is not None and len(label_channels) != num_classes - 1:
        raise ValueError(
            f"dataset.json has {num_classes} labels, so it needs {num_classes - 1} label channels, "
            f"but '{KEY_LABEL_CHANNELS}' lists {len(label_channels)}."
        )
    if channel_names is not None and len(channel_names) != num_image + len(label_channels):
        raise ValueError(
            f"dataset.json 'channel_names' has {len(channel_names)} entries but {num_image} image channels plus "
            f"{len(label_channels)} label channels were declared."
        )
    return num_image, label_channels
