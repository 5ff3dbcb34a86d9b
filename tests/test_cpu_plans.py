"""The CPU configuration added to nnU-Net plans (``nnUNetv2_nl_plan_cpu``): inherits the planned one, narrower and
with a smaller batch, resolved by nnU-Net's own plans handler."""
from __future__ import annotations

import json

import pytest

from nnunet_noisylabels.cli.plan_cpu import main
from nnunet_noisylabels.common.cpu_plans import add_cpu_configuration, cpu_configuration

PLANS = {
    "dataset_name": "Dataset001_X", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1, 1, 1],
    "original_median_shape_after_transp": [32, 32, 32], "image_reader_writer": "SimpleITKIO",
    "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "foreground_intensity_properties_per_channel": {},
    "configurations": {
        "3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 9, "patch_size": [32, 32, 32], "median_image_size_in_voxels": [32, 32, 32],
            "spacing": [1, 1, 1], "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {},
            "batch_dice": False,
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {"n_stages": 4, "features_per_stage": [32, 64, 128, 256],
                                "conv_op": "torch.nn.modules.conv.Conv3d",
                                "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 3,
                                "n_conv_per_stage": [2] * 4, "n_conv_per_stage_decoder": [2] * 3, "conv_bias": True,
                                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                                "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                                "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                                "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        },
        "3d_lowres_like": {"inherits_from": "3d_fullres", "batch_size": 4},
    },
}


def test_cpu_configuration_inherits_and_is_narrower():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads(json.dumps(PLANS))
    plans["configurations"]["3d_fullres_cpu"] = cpu_configuration(plans, "3d_fullres")
    pm = PlansManager(plans)
    cpu, base = pm.get_configuration("3d_fullres_cpu"), pm.get_configuration("3d_fullres")
    assert cpu.batch_size == 2 and base.batch_size == 9
    assert cpu.data_identifier == base.data_identifier and cpu.patch_size == base.patch_size
    assert cpu.network_arch_init_kwargs["features_per_stage"] == [16, 32, 64, 128]
    assert base.network_arch_init_kwargs["features_per_stage"] == [32, 64, 128, 256]  # the original is untouched
    # a configuration that itself inherits the architecture
    derived = cpu_configuration(plans, "3d_lowres_like", feature_scale=0.25, batch_size=1)
    assert derived["inherits_from"] == "3d_lowres_like" and derived["batch_size"] == 1
    assert derived["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 64]
    with pytest.raises(ValueError, match="no configuration '2d'"):
        cpu_configuration(plans, "2d")
    with pytest.raises(ValueError, match="feature_scale"):
        cpu_configuration(plans, "3d_fullres", feature_scale=0)


def test_cli_adds_the_configuration_and_refuses_bad_input(nnunet_env, tmp_path, capsys):
    from pathlib import Path

    pre = Path(nnunet_env["nnUNet_preprocessed"]) / "Dataset001_X"
    pre.mkdir()
    assert main(["-d", "Dataset001_X"]) == 2
    assert "plan the dataset first" in capsys.readouterr().err
    (pre / "nnUNetPlans.json").write_text(json.dumps(PLANS))
    assert main(["-d", "Dataset001_X", "-c", "2d"]) == 2
    assert "no configuration '2d'" in capsys.readouterr().err
    assert main(["-d", "Dataset001_X", "--batch_size", "3"]) == 0
    assert "3d_fullres_cpu" in capsys.readouterr().out
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["3d_fullres_cpu"]["batch_size"] == 3
    assert plans["configurations"]["3d_fullres"] == PLANS["configurations"]["3d_fullres"]
    assert add_cpu_configuration(pre, "3d_fullres") == "3d_fullres_cpu"  # re-running replaces it
    assert json.loads((pre / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres_cpu"]["batch_size"] == 2
