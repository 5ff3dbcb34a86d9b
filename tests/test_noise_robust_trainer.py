"""NoiseRobustTrainer through nnU-Net: training, logging, resume, prediction, export (CPU, synthetic 2D data)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import console_script, run
from nnunet_noisylabels._autoenv import ext_trainer_dir
from nnunet_noisylabels.cli.export import main as export_main
from nnunet_noisylabels.common.synthetic import write_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET_ID = 971
DATASET = f"Dataset{DATASET_ID:03d}_TwinSynth"
TRAINER = "NoiseRobustTrainer_debug"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """nnU-Net folders for this module (set in os.environ for in-process use and returned for subprocesses)."""
    root = tmp_path_factory.mktemp("nnunet")
    values = {
        "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"), "nnUNet_compile": "0", "nnUNet_def_n_proc": "1",
        "nnUNet_n_proc_DA": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "nnUNet_extTrainer": ext_trainer_dir(),
        "PYTHONPATH": os.pathsep.join(p for p in [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")] if p),
    }
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(values[k]).mkdir(parents=True)
    mp = pytest.MonkeyPatch()
    for k, v in values.items():
        mp.setenv(k, v)
    yield dict(os.environ) | {"_root": str(root)}
    mp.undo()


@pytest.fixture(scope="module")
def preprocessed(env):
    """A 2D binary dataset (32x32, labels dilated by 2 px), planned and preprocessed for '2d'."""
    write_synthetic_dataset(env["nnUNet_raw"], DATASET_ID, name="TwinSynth", dim=2, num_classes=2, num_cases=6,
                            num_clean=2, num_test=2, shape=(32, 32), noise="dilate", noise_strength=2)
    run([console_script("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "2d", "-np", "1"], env)
    return Path(env["nnUNet_preprocessed"]) / DATASET


@pytest.fixture(scope="module")
def trained(env, preprocessed):
    """The model folder of a short NoiseRobustTrainer_debug run through the stock nnUNetv2_train command."""
    run([console_script("nnUNetv2_train"), str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu"], env)
    return Path(env["nnUNet_results"]) / DATASET / f"{TRAINER}__nnUNetPlans__2d"


def _trainer(preprocessed: Path, name: str = TRAINER, fold: int = 1, dataset_json: dict | None = None):
    from nnunet_noisylabels.trainers import all_trainer_classes

    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    dj = dataset_json or json.loads((preprocessed / "dataset.json").read_text())
    return all_trainer_classes()[name](plans, "2d", fold, dj, torch.device("cpu"))


def _batch(trainer, seed: int) -> dict:
    """A synthetic training batch of the plans' patch size with deep-supervision targets (bright square = class 1)."""
    g = torch.Generator().manual_seed(seed)
    ps = trainer.configuration_manager.patch_size
    seg = torch.zeros(2, 1, *ps, dtype=torch.int16)
    seg[:, :, 8:20, 10:24] = 1
    data = (seg.float() * 2 + torch.randn(2, 1, *ps, generator=g) * 0.5)
    targets = []
    for scale in trainer._get_deep_supervision_scales():
        size = [max(1, round(s * p)) for s, p in zip(scale, ps)]
        targets.append(torch.nn.functional.interpolate(seg.float(), size=size, mode="nearest").to(torch.int16))
    return {"data": data, "target": targets}


def _state(trainer):
    return {k: v.detach().clone() for k, v in trainer._twin().state_dict().items()}


def _flat(sd: dict, prefix: str) -> torch.Tensor:
    return torch.cat([v.float().flatten() for k, v in sd.items() if k.startswith(prefix)])


def _fg_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    inter = np.logical_and(pred > 0, ref > 0).sum()
    return float(2 * inter / max(1, (pred > 0).sum() + (ref > 0).sum()))


# --- fast: export error paths -----------------------------------------------------------------------------------

def test_export_refuses_non_twin_checkpoint(tmp_path, capsys):
    src = tmp_path / "nnUNetTrainer__nnUNetPlans__2d"
    (src / "fold_0").mkdir(parents=True)
    (src / "plans.json").write_text("{}")
    (src / "dataset.json").write_text("{}")
    torch.save({"network_weights": torch.nn.Conv2d(1, 1, 1).state_dict(), "init_args": {}},
               src / "fold_0" / "checkpoint_final.pth")
    assert export_main(["-m", str(src), "-o", str(tmp_path / "out")]) == 2
    assert "not from a TwinNetwork" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # temporary folder cleaned up
    assert export_main(["-m", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 2
    assert "plans.json" in capsys.readouterr().err


# --- slow: through nnU-Net --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_members_differ_at_init_and_seeds_are_respected(preprocessed):
    from nnunet_noisylabels.robust.trainer import NoiseRobustTrainer
    from nnunet_noisylabels.trainers.variants import NoiseRobustTrainer_debug
    t = _trainer(preprocessed)
    args = (t.plans_manager, t.configuration_manager, 1, t.label_manager.num_segmentation_heads, True)
    for cls in (NoiseRobustTrainer, NoiseRobustTrainer_debug):
        sd = cls.build_network_architecture(*args).state_dict()
        assert not torch.allclose(_flat(sd, "members.0."), _flat(sd, "members.1."))
    a = NoiseRobustTrainer_debug.build_network_architecture(*args).state_dict()
    b = NoiseRobustTrainer_debug.build_network_architecture(*args).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_softening_schedule_and_hard_targets_without_softening(preprocessed):
    from nnunet_noisylabels.robust.soft_targets import one_hot
    full = _trainer(preprocessed, "NoiseRobustTrainer")
    assert full.current_peer_weight() == 0.0  # ramp-up starts at 0
    full.current_epoch = int(full.softening_rampup_fraction * full.num_epochs)
    assert full.current_peer_weight() == pytest.approx(full.softening_peer_weight)
    off = _trainer(preprocessed, "NoiseRobustTrainer_noSoftening")
    off.initialize()
    off.current_epoch = 500
    assert off.current_peer_weight() == 0.0
    batch = _batch(off, 0)
    peer = [torch.softmax(torch.randn(2, 2, *t.shape[2:]) * 4, 1) for t in batch["target"]]
    soft, masks, _ = off.make_soft_targets(batch["target"], peer, off.current_peer_weight())
    for s, (q, t) in enumerate(zip(soft, batch["target"])):
        if off._ds_weights[s] != 0:
            assert torch.equal(q, one_hot(t, 2))


def test_band_is_learned_from_the_peer_and_clean_pairs_keep_hard_targets(preprocessed):
    """With an ignore label the ignored voxels get the peer's prediction (ramped weight) instead of nothing; the
    samples of clean pairs (named in dataset.json) keep one-hot targets, no peer term; the ablation ignores the band."""
    from nnunet_noisylabels.robust.soft_targets import one_hot
    dj = json.loads((preprocessed / "dataset.json").read_text())
    dj["labels"] = {**dj["labels"], "ignore": 2}
    dj["nnunet_noisylabels"] = {"clean_cases": ["case_a"]}
    tr = _trainer(preprocessed, "NoiseRobustTrainer", dataset_json=dj)
    tr.initialize()
    assert tr.current_band_weight() == 0.0  # ramped like the peer term: the band is ignored at first
    tr.current_epoch = tr.num_epochs - 1
    assert tr.current_band_weight() == pytest.approx(1.0)
    batch = _batch(tr, 0)
    for t in batch["target"]:
        t[:, :, :, :3] = 2  # a band along one edge, in both samples
    hard = tr.hard_samples(["case_a", "case_b"])
    assert hard.tolist() == [True, False]
    peer = [torch.softmax(torch.randn(2, 2, *t.shape[2:]) * 4, 1) for t in batch["target"]]
    soft, masks, ws = tr.make_soft_targets(batch["target"], peer, tr.current_peer_weight(),
                                           band_weight=tr.current_band_weight(), hard=hard)
    for s, (q, m, t, p) in enumerate(zip(soft, masks, batch["target"], peer)):
        if tr._ds_weights[s] == 0:
            continue
        band = (t == 2).expand_as(q)
        assert torch.equal(q[band], p[band])
        assert torch.equal(m, torch.ones_like(m))  # band weight 1 at the end of the ramp, known voxels 1
        known = torch.where(t == 2, torch.zeros_like(t), t)
        # the clean pair: one-hot wherever the label is known; the other sample is softened
        assert torch.equal(q[0][~band[0]], one_hot(known, 2)[0][~band[0]])
        assert not torch.equal(q[1][~band[1]], one_hot(known, 2)[1][~band[1]])
        assert ws[s][0].sum() == 0 and ws[s][1].sum() > 0  # the peer term acts on the noisy sample only
    ablation = _trainer(preprocessed, "NoiseRobustTrainer_noPeer", dataset_json=dj)
    ablation.initialize()
    ablation.current_epoch = ablation.num_epochs - 1
    assert ablation.current_band_weight() == 0.0 and ablation.current_peer_weight() == 0.0
    _, masks, _ = ablation.make_soft_targets(batch["target"], peer, 0.0, band_weight=0.0, hard=hard)
    assert torch.equal(masks[0], batch["target"][0] != 2)


@pytest.mark.slow
def test_region_based_dataset_is_refused(preprocessed):
    dj = json.loads((preprocessed / "dataset.json").read_text())
    dj["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    dj["regions_class_order"] = [1, 2]
    with pytest.raises(ValueError, match="regions"):
        _trainer(preprocessed, "NoiseRobustTrainer", dataset_json=dj)


@pytest.mark.slow
def test_resume_reproduces_weights_and_members_stay_distinct(preprocessed, tmp_path):
    torch.manual_seed(0)
    a = _trainer(preprocessed)
    a.initialize()
    a.on_train_epoch_start()
    out = a.train_step(_batch(a, 1))
    assert set(out) >= {"loss", "loss_net_0", "loss_net_1", "peer_override_net_0", "train_agreement"}
    ckpt = str(tmp_path / "ckpt.pth")
    a.save_checkpoint(ckpt)  # as at the end of epoch 0
    saved = _state(a)
    a.current_epoch += 1
    a.on_train_epoch_start()
    a.train_step(_batch(a, 2))
    continued = _state(a)

    b = _trainer(preprocessed)
    b.load_checkpoint(ckpt)
    assert all(torch.equal(saved[k], v) for k, v in _state(b).items())
    assert b.current_epoch == a.current_epoch
    b.on_train_epoch_start()
    b.train_step(_batch(b, 2))
    resumed = _state(b)
    assert all(torch.equal(continued[k], resumed[k]) for k in continued), "resume does not reproduce the weights"
    assert not torch.allclose(_flat(resumed, "members.0."), _flat(resumed, "members.1."))


@pytest.mark.slow
def test_single_network_ablation_trains(preprocessed):
    t = _trainer(preprocessed, "NoiseRobustTrainer_singleNet")
    t.initialize()
    assert t._twin().num_members == 1
    t.on_train_epoch_start()
    t.current_epoch = t.num_epochs  # ramp finished: the self-peer term is active
    before = _state(t)
    out = t.train_step(_batch(t, 3))
    assert np.isfinite(out["loss"]) and "loss_net_1" not in out
    assert any(not torch.equal(before[k], v) for k, v in _state(t).items())


@pytest.mark.slow
def test_training_run_checkpoints_logs_and_learns(trained, env):
    fold = trained / "fold_0"
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "progress.png", "validation/summary.json"):
        assert (fold / name).is_file(), name
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == TRAINER
    sd = ckpt["network_weights"]
    assert not torch.allclose(_flat(sd, "members.0."), _flat(sd, "members.1."))
    logs = ckpt["logging"]
    for key in ("loss_net_0", "loss_net_1", "mean_fg_dice_net_0", "mean_fg_dice_net_1", "agreement_fg_dice",
                "peer_weight", "peer_override_net_0"):
        assert len(logs[key]) == 3 and np.all(np.isfinite(logs[key])), key
    assert logs["peer_weight"] == [0.5, 0.5, 0.5]
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["foreground_mean"]["Dice"] > 0.6


@pytest.mark.slow
def test_trained_model_beats_untrained_on_clean_test_labels(trained, env):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    from nnunet_noisylabels.robust.trainer import NoiseRobustTrainer

    raw = Path(env["nnUNet_raw"]) / DATASET
    cases = sorted(p.name[:-len("_0000.png")] for p in (raw / "imagesTs").glob("*_0000.png"))
    io = NaturalImage2DIO()
    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(trained), (0,))
    untrained = []
    for seed in range(3):  # untrained twins from several initializations
        torch.manual_seed(seed)
        net = NoiseRobustTrainer.build_network_architecture(
            predictor.plans_manager, predictor.configuration_manager, 1, 2, enable_deep_supervision=False)
        p = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
        p.manual_initialization(net, predictor.plans_manager, predictor.configuration_manager,
                                [net.state_dict()], predictor.dataset_json, TRAINER, (0, 1))
        untrained.append(p)
    dice_trained, dice_untrained = [], [[] for _ in untrained]
    for c in cases:
        img, props = io.read_images([str(raw / "imagesTs" / f"{c}_0000.png")])
        ref, _ = io.read_seg(str(raw / "labelsTs" / f"{c}.png"))
        dice_trained.append(_fg_dice(predictor.predict_single_npy_array(img, props), ref))
        for d, p in zip(dice_untrained, untrained):
            d.append(_fg_dice(p.predict_single_npy_array(img, props), ref))
    best_untrained = max(np.mean(d) for d in dice_untrained)
    assert np.mean(dice_trained) > 0.7, dice_trained
    assert np.mean(dice_trained) > best_untrained + 0.15, (dice_trained, dice_untrained)


_STOCK_PREDICT = """
import importlib, os, sys
assert "nnUNet_extTrainer" not in os.environ, "stock run must not see the plugin's trainer path"
for name in [m for m in sys.modules if m.split(".")[0] == "nnunet_noisylabels"]:
    del sys.modules[name]

class _RefusePlugin:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "nnunet_noisylabels":
            raise ModuleNotFoundError("plugin blocked: " + name)
        return None

sys.meta_path.insert(0, _RefusePlugin())
try:
    importlib.import_module("nnunet_noisylabels")
except ModuleNotFoundError:
    pass
else:
    sys.exit("the plugin is still importable")
sys.argv = ["nnUNetv2_predict_from_modelfolder"] + sys.argv[1:]
from nnunetv2.inference.predict_from_raw_data import predict_entry_point_modelfolder
predict_entry_point_modelfolder()
"""


@pytest.mark.slow
def test_predict_equals_member_mean_and_export_runs_on_stock_nnunet(trained, env, tmp_path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    def predictor_for(folder: Path, folds):
        p = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
        p.initialize_from_trained_model_folder(str(folder), folds)
        return p

    exported_all = tmp_path / "export_all"
    exported_m1 = tmp_path / "export_member1"
    assert export_main(["-m", str(trained), "-o", str(exported_all)]) == 0
    assert export_main(["-m", str(trained), "-o", str(exported_m1), "--member", "1"]) == 0
    assert sorted(p.name for p in exported_all.glob("fold_*")) == ["fold_0", "fold_1"]
    assert [p.name for p in exported_m1.glob("fold_*")] == ["fold_0"]

    x = torch.randn(1, 1, 40, 36, generator=torch.Generator().manual_seed(0))
    twin = predictor_for(trained, (0,))
    logits_twin = twin.predict_logits_from_preprocessed_data(x)
    members = [m for m in twin.network.members]
    logits_members = []
    for m in members:  # each member alone, through the same sliding window
        p = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
        p.manual_initialization(m, twin.plans_manager, twin.configuration_manager, [m.state_dict()],
                                twin.dataset_json, "nnUNetTrainer", twin.allowed_mirroring_axes)
        logits_members.append(p.predict_logits_from_preprocessed_data(x))
    # nnU-Net accumulates sliding-window logits in float16: compare at that resolution, and make sure the check
    # would catch a wrong combination (one member alone is far off)
    tol = {"atol": 0.05, "rtol": 5e-3}
    torch.testing.assert_close(logits_twin, (logits_members[0] + logits_members[1]) / 2, **tol)
    assert (logits_members[0] - logits_twin).abs().max() > 20 * tol["atol"]
    exp_all = predictor_for(exported_all, (0, 1))
    assert exp_all.trainer_name == "nnUNetTrainer"
    torch.testing.assert_close(exp_all.predict_logits_from_preprocessed_data(x), logits_twin, **tol)
    torch.testing.assert_close(predictor_for(exported_m1, (0,)).predict_logits_from_preprocessed_data(x),
                               logits_members[1], atol=1e-5, rtol=1e-5)

    # the stock command line: twin folder with the plugin, exported folder without it
    raw = Path(env["nnUNet_raw"]) / DATASET
    out_twin, out_stock = tmp_path / "pred_twin", tmp_path / "pred_stock"
    run([console_script("nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(out_twin), "-d", str(DATASET_ID),
         "-c", "2d", "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "0", "-nps", "0"], env)
    # "stock" nnU-Net: no trainer path, and every import of the plugin refused inside the predicting process (the
    # package may be installed in this environment, so hiding it from the path is not enough); the checkpoint
    # loading and network building must then succeed on nnU-Net alone (its spawned workers only resample and write)
    stock_env = {k: v for k, v in env.items() if k not in ("nnUNet_extTrainer", "PYTHONPATH")}
    stock_env["NNUNET_NOISYLABELS_NO_AUTOENV"] = "1"
    run([sys.executable, "-c", _STOCK_PREDICT, "-i", str(raw / "imagesTs"), "-o", str(out_stock),
         "-m", str(exported_all), "-f", "0", "1", "-device", "cpu", "-npp", "1", "-nps", "1"], stock_env)
    io = NaturalImage2DIO()
    files = sorted(p.name for p in out_twin.glob("*.png"))
    assert files and files == sorted(p.name for p in out_stock.glob("*.png"))
    for f in files:
        a, _ = io.read_seg(str(out_twin / f))
        b, _ = io.read_seg(str(out_stock / f))
        assert (a != b).mean() < 0.001, f
