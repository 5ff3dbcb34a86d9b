"""Plans for a CPU: an extra nnU-Net configuration, through nnU-Net's own plans mechanism, that trains in minutes on
a few cores.

nnU-Net plans for a GPU: for a 3D dataset such as the MSD hippocampus its ``3d_fullres`` configuration trains at
about 6 s per iteration on 2 CPU cores. :func:`add_cpu_configuration` adds a configuration ``<base>_cpu`` to an
existing plans file that inherits everything from ``<base>`` (``"inherits_from"``, as nnU-Net's documentation on
plans files describes): the same preprocessed data (``data_identifier``), spacing, patch size, normalization and
network topology, with narrower features (``feature_scale`` of each stage's width) and a smaller batch. Nothing is
re-planned or re-preprocessed; every nnU-Net command takes it by name (``nnUNetv2_train DATASET 3d_fullres_cpu ...``,
``nnUNetv2_predict -c 3d_fullres_cpu``). It is a different model than ``<base>``: compare arms only within one
configuration.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from nnunet_noisylabels.common.raw_dataset import RawDatasetError, load_json, write_json_atomic

CPU_SUFFIX = "_cpu"


def cpu_configuration(plans: dict, base: str, feature_scale: float = 0.5, batch_size: int = 2,
                      min_features: int = 8) -> dict:
    """The plans entry of ``<base>_cpu``: inherits ``base``, with ``batch_size`` and each stage's features scaled by
    ``feature_scale`` (at least ``min_features``)."""
    configs = plans.get("configurations", {})
    if base not in configs:
        raise RawDatasetError(f"The plans have no configuration '{base}' (they have {sorted(configs)}); plan it "
                              f"with nnUNetv2_plan_and_preprocess first.")
    if not 0 < feature_scale <= 1:
        raise ValueError(f"feature_scale must lie in (0, 1], got {feature_scale}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    resolved = dict(configs[base])
    while "architecture" not in resolved and "inherits_from" in resolved:  # a configuration that inherits it
        resolved = {**configs[resolved.pop("inherits_from")], **resolved}
    architecture = copy.deepcopy(resolved["architecture"])
    kwargs = architecture["arch_kwargs"]
    kwargs["features_per_stage"] = [max(int(min_features), int(round(f * feature_scale)))
                                    for f in kwargs["features_per_stage"]]
    return {"inherits_from": base, "batch_size": int(batch_size), "architecture": architecture}


def add_cpu_configuration(preprocessed_dataset: str | os.PathLike, base: str, plans_identifier: str = "nnUNetPlans",
                          feature_scale: float = 0.5, batch_size: int = 2) -> str:
    """Add ``<base>_cpu`` to ``<preprocessed_dataset>/<plans_identifier>.json`` (replacing an earlier one of that
    name; every other configuration is left as it is). Returns the configuration's name."""
    path = Path(preprocessed_dataset) / f"{plans_identifier}.json"
    if not path.is_file():
        raise RawDatasetError(f"{path} not found: plan the dataset first (nnUNetv2_plan_and_preprocess -d ID).")
    plans = load_json(path)
    name = base + CPU_SUFFIX
    plans["configurations"][name] = cpu_configuration(plans, base, feature_scale, batch_size)
    write_json_atomic(plans, path, indent=4)
    return name
