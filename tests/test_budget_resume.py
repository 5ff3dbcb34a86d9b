"""Short and budget trainer variants must write ``checkpoint_latest.pth`` so that ``nnUNetv2_train ... --c`` resumes
from the latest epoch (nnU-Net otherwise falls back to ``checkpoint_best.pth`` silently, rewinding the training).

nnU-Net writes ``checkpoint_latest.pth`` after epoch ``e`` when ``(e + 1) % save_every == 0`` and ``e`` is not the
last epoch (the last one writes ``checkpoint_final.pth`` and removes ``checkpoint_latest.pth``).
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import console_script, run

from nnunet_noisylabels.revision.aux_dataset import aux_dataset_json_keys
from nnunet_noisylabels.trainers.budget import BUDGET_ENV

# the smallest plans nnUNetTrainer.__init__ accepts (construction only: no network, no data)
PLANS = {
    "dataset_name": "Dataset999_Unit", "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [1, 32, 32],
    "image_reader_writer": "NaturalImage2DIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {},
    "configurations": {"2d": {
        "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [32, 32], "median_image_size_in_voxels": [32, 32], "spacing": [1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False], "batch_dice": True,
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
        "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities_kwargs": {},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": {}, "_kw_requires_import": []}}},
}
DATASET_JSON = {"channel_names": {"0": "x"}, "labels": {"background": 0, "fg": 1}, "numTraining": 4,
                "file_ending": ".png"}


def latest_checkpoint_epochs(num_epochs: int, save_every: int) -> list[int]:
    """The epochs after which nnU-Net's on_epoch_end writes checkpoint_latest.pth."""
    return [e for e in range(num_epochs) if (e + 1) % save_every == 0 and e != num_epochs - 1]


def _assert_resumable(num_epochs: int, save_every: int, what: str = "") -> None:
    written = latest_checkpoint_epochs(num_epochs, save_every)
    if num_epochs >= 2:
        assert written, f"{what}: {num_epochs} epochs with save_every={save_every} never write checkpoint_latest.pth"
    # an interruption at any epoch loses at most about a tenth of the run (and at most nnU-Net's 50 epochs)
    gap = max(1, min(50, math.ceil(num_epochs / 10)))
    starts = [0] + [e + 1 for e in written]
    assert all(b - a <= gap for a, b in zip(starts, starts[1:] + [num_epochs - 1])), (what, written)


@pytest.mark.parametrize("num_epochs", [1, 2, 3, 4, 5, 9, 10, 11, 15, 50, 99, 100, 250, 499, 500, 501, 1000, 4000])
def test_checkpoint_interval_writes_latest_before_the_end(num_epochs):
    from nnunet_noisylabels.trainers.budget import checkpoint_interval

    k = checkpoint_interval(num_epochs)
    assert 1 <= k <= 50
    _assert_resumable(num_epochs, k, f"checkpoint_interval({num_epochs})")
    assert checkpoint_interval(1000) == 50  # long runs: nnU-Net's own interval
    assert checkpoint_interval(num_epochs, save_every=3) <= 3  # never less often than the trainer asked for


def _construct(name: str, cls):
    plans = copy.deepcopy(PLANS)
    plans["continue_training"] = False  # set by nnU-Net's run_training
    dj = dict(DATASET_JSON)
    if name.startswith("NoiseIdentification"):
        dj.update(channel_names={"0": "x", "1": "noNorm"}, **aux_dataset_json_keys(1, 2))
    return cls(plans, "2d", 0, dj, torch.device("cpu"))


def test_every_short_and_budget_variant_writes_checkpoint_latest(nnunet_env, monkeypatch):
    """Construct every plugin trainer (cheap: no network, no data) and check its checkpoint schedule; the budget
    variants at a few environment budgets."""
    from nnunet_noisylabels.trainers import all_trainer_classes

    classes = all_trainer_classes()
    short = {n: c for n, c in classes.items() if n.endswith(("epochs", "debug"))}
    budget = {n: c for n, c in classes.items() if getattr(c, "budget_from_env", False)}
    assert {"nnUNetTrainer_debug", "NoiseRobustTrainer_debug", "nnUNetTrainerGCE_5epochs",
            "nnUNetTrainerCoTeaching_5epochs", "NoiseIdentificationTrainer_debug"} <= set(short)
    assert {"nnUNetTrainer_budget", "NoiseRobustTrainer_budget", "nnUNetTrainerCLSLR_budget"} <= set(budget)
    for name, cls in sorted(short.items()):
        t = _construct(name, cls)
        assert t.num_epochs < 1000, name
        _assert_resumable(t.num_epochs, t.save_every, name)
    for epochs in ("2", "4", "30"):
        monkeypatch.setenv(BUDGET_ENV["num_epochs"], epochs)
        for name, cls in sorted(budget.items()):
            t = _construct(name, cls)
            assert t.num_epochs == int(epochs), name
            _assert_resumable(t.num_epochs, t.save_every, f"{name} at {epochs} epochs")
    monkeypatch.delenv(BUDGET_ENV["num_epochs"])
    t = _construct("nnUNetTrainer_budget", classes["nnUNetTrainer_budget"])
    assert (t.num_epochs, t.save_every) == (1000, 50)  # no budget set: stock nnU-Net


class _Interrupted(Exception):
    pass


def test_budget_variants_seed_their_run_from_the_environment(nnunet_env, monkeypatch):
    """With nnUNet_nl_seed set, a budget trainer seeds torch/numpy before its networks are built: two trainers of
    one seed start from the same random state, another seed from another."""
    import numpy as np

    from nnunet_noisylabels.trainers.budget import SEED_ENV
    from nnunet_noisylabels.trainers.variants import NoiseRobustTrainer_budget

    def first_draws(seed: str) -> tuple[float, float]:
        monkeypatch.setenv(SEED_ENV, seed)
        _construct("NoiseRobustTrainer_budget", NoiseRobustTrainer_budget)
        return float(torch.rand(1)), float(np.random.rand())

    assert first_draws("3") == first_draws("3")
    assert first_draws("3") != first_draws("4")


@pytest.mark.slow
def test_continue_resumes_from_the_latest_epoch(nnunet_env, make_dataset, monkeypatch):
    """Train nnUNetTrainer_debug (4 epochs; 2 iterations each to keep it fast, the checkpoint schedule depends on
    the epochs only) in process, interrupt it after the third epoch and resume the way ``nnUNetv2_train ... --c``
    does: it must start at epoch 3 and train only the last epoch."""
    from nnunetv2.run.run_training import maybe_load_checkpoint

    from nnunet_noisylabels.trainers.variants import nnUNetTrainer_debug

    make_dataset(1, name="Resume", dim=2, num_classes=2, num_cases=5, num_clean=0, num_test=0, shape=(32, 32))
    run([console_script("nnUNetv2_plan_and_preprocess"), "-d", "1", "-c", "2d", "-np", "1"], nnunet_env)
    pre = Path(nnunet_env["nnUNet_preprocessed"]) / "Dataset001_Resume"
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # in process, no augmentation workers

    class Recorder(nnUNetTrainer_debug):
        budget_iterations = 2
        budget_val_iterations = 1
        stop_after: int | None = 3
        seen: list[tuple[int, list[str]]] = []

        def on_epoch_end(self):
            super().on_epoch_end()
            self.seen.append((self.current_epoch, sorted(p.name for p in Path(self.output_folder).glob("*.pth"))))
            if self.current_epoch == self.stop_after:
                raise _Interrupted

    def trainer(continue_training: bool):
        plans = json.loads((pre / "nnUNetPlans.json").read_text())
        plans["continue_training"] = continue_training
        dj = json.loads((pre / "dataset.json").read_text())
        return Recorder(plans, "2d", 0, dj, torch.device("cpu"))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = trainer(False)
        with pytest.raises(_Interrupted):
            first.run_training()
        assert [e for e, _ in Recorder.seen] == [1, 2, 3]
        assert all("checkpoint_latest.pth" in files for _, files in Recorder.seen), Recorder.seen
        latest = Path(first.output_folder) / "checkpoint_latest.pth"
        assert torch.load(latest, map_location="cpu", weights_only=False)["current_epoch"] == 3

        Recorder.seen.clear()
        Recorder.stop_after = None
        resumed = trainer(True)
        maybe_load_checkpoint(resumed, continue_training=True, validation_only=False)
        assert resumed.current_epoch == 3  # from checkpoint_latest, not rewound to checkpoint_best
        resumed.run_training()
    finally:
        torch.set_num_threads(threads)
    assert [e for e, _ in Recorder.seen] == [4]  # only the last epoch was trained again
    files = {p.name for p in Path(resumed.output_folder).glob("*.pth")}
    assert "checkpoint_final.pth" in files and "checkpoint_latest.pth" not in files
