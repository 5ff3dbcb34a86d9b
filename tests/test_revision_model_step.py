"""Label revision, the nnU-Net model step: branch outputs as noise codes, second passes, and (slow) real
training through nnU-Net."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from revision_support import FollowingStep, make_dataset, read_array, tree_digest

from nnunet_noisylabels.cli.revise import main
from nnunet_noisylabels.revision import base as rv_base
from nnunet_noisylabels.revision import model_step as rv_step
from nnunet_noisylabels.revision import realign_step as rv_realign


def test_branch_wrapper_turns_both_noise_branches_into_noise_codes():
    import torch

    K = 3

    class FakeNIN(torch.nn.Module):
        eval_output = "fused"

        def __init__(self, over, under):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.over, self.under = over, under

        def forward(self, x):
            assert self.eval_output == "branches"
            b = x.shape[0]
            revised = torch.zeros(b, K, *self.over.shape[1:])
            return torch.cat([revised, self.over.expand(b, -1, -1, -1), self.under.expand(b, -1, -1, -1)], dim=1)

    over = torch.tensor([[[5., 5.], [5., 5.]], [[2., -1.], [-3., -4.]], [[-2., -1.], [-3., 1.]]])
    under = torch.tensor([[[5., 5.], [5., 5.]], [[-2., 3.], [-3., -4.]], [[1., -1.], [-3., -4.]]])
    net = FakeNIN(over, under)
    wrapped = rv_step._branches_as_noise_code(net, K)
    out = wrapped(torch.zeros(2, 1, 2, 2))
    assert out.shape == (2, len(rv_base.NOISE_MAP_LABELS), 2, 2) and net.eval_output == "fused"
    # flagged where any FOREGROUND channel's logit > 0 (the background channels' 5 are ignored):
    # over flags [[1, 0], [0, 1]], under flags [[1, 1], [0, 0]]
    np.testing.assert_array_equal(out.argmax(1)[0].numpy(), [[rv_base.NOISE_SWAP, rv_base.NOISE_UNDER],
                                                             [rv_base.NOISE_NONE, rv_base.NOISE_OVER]])
    assert torch.allclose(out.exp().sum(1), torch.ones(2, 2, 2))  # joint probabilities of the two flags

    # nnU-Net averages logits over windows and mirrors, then takes the argmax: that must flag where the averaged
    # branch logit is positive, as predicting each branch alone would
    g = torch.Generator().manual_seed(0)
    o1, o2, u1, u2 = (4 * torch.randn(K, 8, 8, generator=g) for _ in range(4))
    mean = (rv_step._branches_as_noise_code(FakeNIN(o1, u1), K)(torch.zeros(1, 1, 8, 8))
            + rv_step._branches_as_noise_code(FakeNIN(o2, u2), K)(torch.zeros(1, 1, 8, 8))) / 2
    o_avg = ((o1 + o2) / 2)[1:].amax(0)
    u_avg = ((u1 + u2) / 2)[1:].amax(0)
    expected = (o_avg > 0).long() * rv_base.NOISE_OVER + (u_avg > 0).long() * rv_base.NOISE_UNDER
    both_max = (o1[1:].argmax(0) == o2[1:].argmax(0)) & (u1[1:].argmax(0) == u2[1:].argmax(0))
    # (amax and mean commute where both windows agree on the strongest foreground class)
    np.testing.assert_array_equal(mean.argmax(1)[0][both_max].numpy(), expected[both_max].numpy())
    assert both_max.sum() > 20

    # the predictor loads checkpoints into the wrapper: they must land in the wrapped network
    wrapped.load_state_dict({"w": torch.ones(1)}, strict=False)
    assert net.w.item() == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("method, trainer, dim, num_classes, cpu_plans", [
    ("nin", "NoiseIdentificationTrainer_debug", 2, 2, False),
    ("clean_only", "nnUNetTrainer_debug", 3, 3, False),
    ("nin", "NoiseIdentificationTrainer_debug", 3, 2, True),
])
def test_end_to_end_through_nnunet(nnunet_env, method, trainer, dim, num_classes, cpu_plans, tmp_path):
    """Plan, preprocess, train (a few iterations) and predict through nnU-Net, then check the outcome on disk; with
    --cpu_plans the model is the narrower CPU configuration trained on the same preprocessed data."""
    import torch

    torch.set_num_threads(1)
    raw = Path(nnunet_env["nnUNet_raw"])
    ds, truth = make_dataset(raw, dim=dim, n_cases=5, n_clean=2, num_classes=num_classes, name="Dataset111_E2E")
    originals = tree_digest(ds / "labelsTr")
    rc = main(["-d", "111", "--method", method, "-tr", trainer, "-device", "cpu", "--no_pbar",
               "--truth", str(truth)] + (["--cpu_plans"] if cpu_plans else []))
    assert rc == 0
    aux_name = "Dataset500_E2E" + ("NIN" if method == "nin" else "NLclean")
    assert (raw / aux_name / "dataset.json").is_file()
    config = ("2d" if dim == 2 else "3d_fullres") + ("_cpu" if cpu_plans else "")
    model = Path(nnunet_env["nnUNet_results"]) / aux_name / f"{trainer}__nnUNetPlans__{config}"
    assert (model / "fold_all" / "checkpoint_final.pth").is_file()
    if cpu_plans:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans = PlansManager(str(model / "plans.json"))
        cpu, base = plans.get_configuration(config), plans.get_configuration("3d_fullres")
        assert cpu.batch_size == 2 and cpu.data_identifier == base.data_identifier
        assert cpu.patch_size == base.patch_size
        assert [2 * f for f in cpu.network_arch_init_kwargs["features_per_stage"]] == \
            base.network_arch_init_kwargs["features_per_stage"]
        assert not (Path(nnunet_env["nnUNet_preprocessed"]) / aux_name / "nnUNetPlans_3d_fullres_cpu").exists()
    assert tree_digest(ds / "labelsTr_imperfect") == originals
    manifest = json.loads((ds / "labelsTr_revision.json").read_text())
    assert manifest["method"] == method and manifest["model"]["trainer"] == trainer
    assert manifest["model"]["configuration"] == config and manifest["aux_dataset"] == aux_name
    # the noise identification network has over/under branches: its noise maps are saved; plain nnU-Net has none
    assert manifest["noise_maps_from"].startswith("network" if method == "nin" else "difference")
    assert sorted(p.name for p in (ds / "noise_maps").iterdir()) == sorted(
        p.name for p in (ds / "labelsTr").iterdir())
    fe = ".png" if dim == 2 else ".nii.gz"
    for i in range(5):
        lab = read_array(ds / "labelsTr" / f"toy_{i:03d}{fe}")
        assert lab.shape == read_array(truth / f"toy_{i:03d}{fe}").shape and lab.max() < num_classes
        if i < 2:
            np.testing.assert_array_equal(lab, read_array(ds / "labelsTr_clean" / f"toy_{i:03d}{fe}"))
    rep = json.loads((ds / "labelsTr_revision_report" / "report.json").read_text())
    assert rep["mean"]["num_with_truth"] == 3 and rep["mean"]["dice_imperfect"] is not None
    # reuse the trained model on a fresh copy: no training, same predictions
    copy = raw / "Dataset112_E2Ecopy"
    shutil.copytree(ds, copy, ignore=shutil.ignore_patterns("labelsTr", "labelsTr_revision*", "noise_maps"))
    os.rename(copy / "labelsTr_imperfect", copy / "labelsTr")
    assert main(["-d", "112", "--method", method, "--model", str(model), "-device", "cpu", "--no_pbar",
                 "--no_report"]) == 0
    assert json.loads((copy / "labelsTr_revision.json").read_text())["model"]["trained_here"] is False
    assert tree_digest(copy / "labelsTr") == tree_digest(ds / "labelsTr")


@pytest.mark.slow
def test_revision_moves_labels_closer_to_truth(nnunet_env, tmp_path, monkeypatch):
    """A short real training of the noise identification network on 3 clean pairs of systematically dilated labels
    must bring the revised labels measurably closer to the truth than the imperfect ones."""
    import torch

    torch.set_num_threads(1)
    ext = tmp_path / "ext_trainers"
    ext.mkdir()
    (ext / "revision_test_trainers.py").write_text(
        "from nnunet_noisylabels.trainers.budget import BudgetMixin\n"
        "from nnunet_noisylabels.revision.nin.trainer import NoiseIdentificationTrainer\n\n\n"
        "class NoiseIdentificationTrainer_revtest(BudgetMixin, NoiseIdentificationTrainer):\n"
        "    budget_epochs = 2\n    budget_iterations = 20\n    budget_val_iterations = 1\n")
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(ext), os.environ["nnUNet_extTrainer"]]))
    raw = Path(nnunet_env["nnUNet_raw"])
    ds, truth = make_dataset(raw, dim=2, n_cases=8, n_clean=3, name="Dataset121_Closer")
    assert main(["-d", "121", "-tr", "NoiseIdentificationTrainer_revtest", "-device", "cpu", "--no_pbar",
                 "--truth", str(truth)]) == 0
    mean = json.loads((ds / "labelsTr_revision_report" / "report.json").read_text())["mean"]
    print("revision_closer_to_truth", {k: mean[k] for k in ("dice_imperfect", "dice_revised", "hd95_imperfect",
                                                           "hd95_revised")})
    assert mean["num_with_truth"] == 5
    assert mean["dice_revised"] > mean["dice_imperfect"] + 0.05, mean
    assert mean["hd95_revised"] < mean["hd95_imperfect"], mean


def test_second_pass_reuses_the_first_pass_model():
    step = rv_step.NnUNetModelStep(trainer="NoiseIdentificationTrainer", device="cpu")
    second = rv_realign.second_pass_step(step, {"model_folder": "/models/x"})
    assert second.model_folder == "/models/x" and not second.save_noise_maps and second.trainer == step.trainer
    assert step.model_folder is None  # the first step is not changed
    fake = FollowingStep(None)
    assert rv_realign.second_pass_step(fake, {}) is fake
