"""Tests of the label-revision stage (``nnUNetv2_nl_revise``): validation, preservation of the originals,
atomic writes, re-run safety, output-dataset mode, report. The model step is replaced by fakes; one slow test
goes through nnU-Net end to end."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nnunet_noisylabels.cli.revise import main
from nnunet_noisylabels.revision import api as rv
from nnunet_noisylabels.common.metrics import dice
from nnunet_noisylabels.revision.aux_dataset import label_channel_indices
from nnunet_noisylabels.common.raw_dataset import reader_writer


# ------------------------------------------------------------------------------------------------ synthetic data
def _disk(shape, center, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius ** 2


def _write_png(arr, path):
    from skimage.io import imsave

    imsave(str(path), arr.astype(np.uint8), check_contrast=False)


def _write_nii(arr, path, spacing=(1.0, 1.0, 1.0)):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


def make_dataset(root: Path, dim: int = 2, n_cases: int = 6, n_clean: int = 2, num_classes: int = 2,
                 name: str = "Dataset101_Toy") -> tuple[Path, Path]:
    """A tiny raw dataset: truth = disks (classes 1..K-1), imperfect = truth dilated by 2 voxels (over-annotation).

    Returns (dataset folder, folder of true labels)."""
    rng = np.random.default_rng(0)
    ds = root / name
    truth_dir = root.parent / f"{name}_truth"  # outside nnUNet_raw: not a dataset
    for sub in ("imagesTr", "labelsTr", "labelsTr_clean"):
        (ds / sub).mkdir(parents=True)
    truth_dir.mkdir()
    fe = ".png" if dim == 2 else ".nii.gz"
    shape = (32, 32) if dim == 2 else (12, 20, 20)
    for i in range(n_cases):
        case = f"toy_{i:03d}"
        truth = np.zeros(shape, np.uint8)
        for k in range(1, num_classes):
            c = [s // 2 + rng.integers(-3, 4) for s in shape]
            c[-1] += (k - 1) * 6 - 3 * (num_classes > 2)
            truth[_disk(shape, c, 4 if dim == 2 else 3) & (truth == 0)] = k
        imperfect = np.zeros_like(truth)
        for k in range(1, num_classes):
            imperfect[ndimage.binary_dilation(truth == k, iterations=2) & (imperfect == 0)] = k
        image = (truth * 60 + rng.normal(60, 10, shape)).clip(0, 255).astype(np.uint8)
        write = _write_png if dim == 2 else _write_nii
        write(image, ds / "imagesTr" / f"{case}_0000{fe}")
        write(imperfect, ds / "labelsTr" / f"{case}{fe}")
        write(truth, truth_dir / f"{case}{fe}")
        if i < n_clean:
            write(truth, ds / "labelsTr_clean" / f"{case}{fe}")
    labels = {"background": 0, **{f"c{k}": k for k in range(1, num_classes)}}
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "gray" if dim == 2 else "MRI"},
                                                 "labels": labels, "numTraining": n_cases, "file_ending": fe}))
    return ds, truth_dir


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (to prove nothing changed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class TruthStep:
    """Fake model step: 'predicts' the true label of every case (and records what it was given)."""

    def __init__(self, truth_dir: Path, fail: BaseException | None = None, bad_shape: bool = False):
        self.truth_dir, self.fail, self.bad_shape, self.calls = truth_dir, fail, bad_shape, []

    def __call__(self, aux: rv.AuxDataset, out: Path) -> dict:
        self.calls.append(aux)
        fe = aux.dataset_json["file_ending"]
        self.seen_label_channels = {}
        if aux.method == "nin":
            C, chans = label_channel_indices(aux.dataset_json)
            rw = reader_writer(aux.dataset_json, aux.images_ts / f"{aux.predict_ids[0]}_0000{fe}")
            for c in aux.predict_ids:
                self.seen_label_channels[c] = [rw.read_seg(str(aux.images_ts / f"{c}_{i:04d}{fe}"))[0]
                                               for i in chans]
        if self.fail is not None:
            raise self.fail
        for c in aux.predict_ids:
            if self.bad_shape:
                _write_png(np.zeros((8, 8), np.uint8), out / f"{c}{fe}")
            else:
                shutil.copy(self.truth_dir / f"{c}{fe}", out / f"{c}{fe}")
        return {"fake": True}


@pytest.fixture
def toy2d(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    (tmp_path / "raw").mkdir()
    ds, truth = make_dataset(tmp_path / "raw")
    return ds, truth


def _read(path):
    from skimage.io import imread
    import SimpleITK as sitk

    return imread(str(path)) if str(path).endswith(".png") else sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# ------------------------------------------------------------------------------------------------ unit tests
def test_noise_map_golden():
    imperfect = np.array([[0, 1, 1, 2], [0, 0, 1, 2]])
    revised = np.array([[1, 0, 1, 1], [0, 0, 1, 0]])
    expected = np.array([[2, 1, 0, 3], [0, 0, 0, 1]])
    np.testing.assert_array_equal(rv.noise_map(imperfect, revised), expected)
    stats = rv.noise_statistics(rv.noise_map(imperfect, revised))
    assert stats["fraction_changed"] == pytest.approx(4 / 8)
    assert stats["fraction_over"] == pytest.approx(2 / 8)
    assert stats["fraction_under"] == pytest.approx(1 / 8)
    assert stats["fraction_swap"] == pytest.approx(1 / 8)


def test_validate_lists_cases(toy2d):
    ds, _ = toy2d
    inp = rv.validate_inputs(ds)
    assert inp.clean_ids == ["toy_000", "toy_001"]
    assert inp.revise_ids == [f"toy_{i:03d}" for i in range(2, 6)]
    assert inp.num_classes == 2 and inp.num_image_channels == 1 and inp.dimensionality == 2
    assert inp.originals_folder == ds / "labelsTr"


@pytest.mark.parametrize("breakage, match", [
    ("no_clean_dir", "labelsTr_clean"),
    ("empty_clean", "clean subset is empty"),
    ("orphan_clean", "no matching case"),
    ("shape_mismatch", "differ in shape"),
    ("bad_value_imperfect", r"label values \[5\]"),
    ("bad_value_clean", r"label values \[3\]"),
    ("missing_image", "image file"),
    ("all_clean", "nothing to revise"),
])
def test_bad_input_clear_error_nothing_written(toy2d, capsys, breakage, match):
    ds, _ = toy2d
    clean = ds / "labelsTr_clean"
    if breakage == "no_clean_dir":
        shutil.rmtree(clean)
    elif breakage == "empty_clean":
        for p in clean.iterdir():
            p.unlink()
    elif breakage == "orphan_clean":
        shutil.copy(clean / "toy_000.png", clean / "stranger.png")
    elif breakage == "shape_mismatch":
        _write_png(np.zeros((30, 32)), clean / "toy_001.png")
    elif breakage == "bad_value_imperfect":
        lab = _read(ds / "labelsTr" / "toy_004.png")
        lab[0, 0] = 5
        _write_png(lab, ds / "labelsTr" / "toy_004.png")
    elif breakage == "bad_value_clean":
        lab = _read(clean / "toy_000.png")
        lab[0, 0] = 3
        _write_png(lab, clean / "toy_000.png")
    elif breakage == "missing_image":
        (ds / "imagesTr" / "toy_003_0000.png").unlink()
    elif breakage == "all_clean":
        for p in (ds / "labelsTr").iterdir():
            shutil.copy(p, clean / p.name)
    before = tree_digest(ds.parent)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        rv.validate_inputs(ds)
    assert main(["-d", str(ds), "--no_pbar"]) == 2
    assert "nnUNetv2_nl_revise: error:" in capsys.readouterr().err
    assert tree_digest(ds.parent) == before  # nothing written anywhere under nnUNet_raw


def test_aux_dataset_layout_nin_and_clean_only(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    ds, _ = make_dataset(tmp_path / "raw", dim=3, n_cases=4, n_clean=2, num_classes=3)
    inp = rv.validate_inputs(ds)
    assert inp.dimensionality == 3 and inp.num_classes == 3
    aux = rv.build_aux_dataset(inp, tmp_path / "aux", "nin")
    dj = json.loads((tmp_path / "aux" / "dataset.json").read_text())
    assert label_channel_indices(dj) == (1, [1, 2])
    assert dj["channel_names"] == {"0": "MRI", "1": "noNorm", "2": "noNorm"} and dj["numTraining"] == 2
    assert sorted(p.name for p in (aux.folder / "labelsTr").iterdir()) == ["toy_000.nii.gz", "toy_001.nii.gz"]
    assert len(list((aux.folder / "imagesTr").iterdir())) == 2 * 3
    assert len(list((aux.folder / "imagesTs").iterdir())) == 2 * 3
    imperfect = _read(ds / "labelsTr" / "toy_003.nii.gz")
    for k in (1, 2):
        ch = _read(aux.folder / "imagesTs" / f"toy_003_{k:04d}.nii.gz")
        np.testing.assert_array_equal(ch, (imperfect == k).astype(np.uint8))
    # the target of the clean pairs is the CLEAN label
    np.testing.assert_array_equal(_read(aux.folder / "labelsTr" / "toy_001.nii.gz"),
                                  _read(ds / "labelsTr_clean" / "toy_001.nii.gz"))
    aux2 = rv.build_aux_dataset(inp, tmp_path / "aux_c", "clean_only")
    assert aux2.dataset_json["channel_names"] == {"0": "MRI"} and "nl_label_channels" not in aux2.dataset_json
    assert sorted(p.name for p in (aux2.folder / "imagesTs").iterdir()) == ["toy_002_0000.nii.gz",
                                                                             "toy_003_0000.nii.gz"]


def test_aux_dataset_name_choice(toy2d, tmp_path):
    ds, _ = toy2d
    assert rv.choose_aux_dataset_name(ds, "nin") == "Dataset500_ToyNIN"
    (tmp_path / "raw" / "Dataset500_Other").mkdir()
    assert rv.choose_aux_dataset_name(ds, "nin") == "Dataset501_ToyNIN"
    (tmp_path / "raw" / "Dataset501_ToyNIN").mkdir()
    (tmp_path / "raw" / "Dataset501_ToyNIN" / "dataset.json").write_text(json.dumps(
        {"nl_source_dataset": ds.name}))
    assert rv.choose_aux_dataset_name(ds, "nin") == "Dataset501_ToyNIN"  # re-runs reuse it
    assert rv.choose_aux_dataset_name(ds, "clean_only") == "Dataset502_ToyNLclean"
    with pytest.raises(ValueError, match="already taken"):
        rv.choose_aux_dataset_name(ds, "nin", aux_id=500)


def test_aux_dataset_belongs_to_its_source(toy2d, tmp_path):
    """Two sources with the same name part (Dataset101_Toy, Dataset102_Toy) never share an auxiliary dataset: the
    second gets its own id, an explicit --aux_id of the other's is refused, and its folder is never deleted."""
    ds, truth = toy2d
    rv.revise_dataset(ds, model_step=TruthStep(truth), progress=False, log=lambda s: None, report=False)
    first = tmp_path / "raw" / "Dataset500_ToyNIN"
    assert json.loads((first / "dataset.json").read_text())["nl_source_dataset"] == ds.name
    before = tree_digest(first)
    twin, twin_truth = make_dataset(tmp_path / "raw", name="Dataset102_Toy")
    assert rv.choose_aux_dataset_name(twin, "nin") == "Dataset501_ToyNIN"
    with pytest.raises(ValueError, match="built from Dataset101_Toy"):
        rv.choose_aux_dataset_name(twin, "nin", aux_id=500)
    with pytest.raises(ValueError, match="built from Dataset101_Toy"):
        rv.check_aux_folder_replaceable(first, twin.name)
    rv.revise_dataset(twin, model_step=TruthStep(twin_truth), progress=False, log=lambda s: None, report=False)
    assert tree_digest(first) == before
    assert json.loads((tmp_path / "raw" / "Dataset501_ToyNIN" / "dataset.json").read_text())[
        "nl_source_dataset"] == twin.name
    assert rv.choose_aux_dataset_name(ds, "nin") == "Dataset500_ToyNIN"  # each source finds its own again
    # a folder of that name that does not say where it came from is neither reused nor replaced
    (tmp_path / "raw" / "Dataset600_ToyNIN").mkdir()
    with pytest.raises(ValueError, match="does not say"):
        rv.choose_aux_dataset_name(ds, "nin", aux_id=600)


def test_revise_in_place_preserves_originals_and_writes_revision(toy2d):
    ds, truth = toy2d
    originals = tree_digest(ds / "labelsTr")
    step = TruthStep(truth)
    manifest = rv.revise_dataset(ds, model_step=step, progress=False, log=lambda s: None, truth_folder=str(truth))
    assert tree_digest(ds / "labelsTr_imperfect") == originals
    for i in range(6):
        case = f"toy_{i:03d}.png"
        ref = ds / "labelsTr_clean" / case if i < 2 else truth / case
        np.testing.assert_array_equal(_read(ds / "labelsTr" / case), _read(ref))
    on_disk = json.loads((ds / "labelsTr_revision.json").read_text())
    assert on_disk == manifest and on_disk["mode"] == "in_place" and on_disk["model"] == {"fake": True}
    assert {c: r["source"] for c, r in on_disk["cases"].items()} == {
        **{f"toy_{i:03d}": "clean" for i in range(2)}, **{f"toy_{i:03d}": "revised" for i in range(2, 6)}}
    # imperfect = dilation of the truth, so the revision only removes voxels: pure over-annotation
    nmap = _read(ds / "noise_maps" / "toy_003.png")
    expected = rv.noise_map(_read(ds / "labelsTr_imperfect" / "toy_003.png"), _read(truth / "toy_003.png"))
    np.testing.assert_array_equal(nmap, expected)
    assert set(np.unique(nmap)) == {0, 1}
    assert on_disk["cases"]["toy_003"]["fraction_over"] > 0 and on_disk["cases"]["toy_003"]["fraction_under"] == 0
    assert not list(ds.glob("*.tmp-*")) and not list(ds.glob("*.old-*"))
    # the report says the revision is closer to the truth, and draws the overlays
    rep = json.loads((ds / "labelsTr_revision_report" / "report.json").read_text())
    assert rep["mean"]["dice_revised"] == pytest.approx(1.0)
    assert rep["mean"]["dice_imperfect"] < 0.9
    assert rep["mean"]["hd95_revised"] == 0.0 and rep["mean"]["hd95_imperfect"] >= 1.0
    assert len(rep["overlays"]) >= 2
    assert all((ds / "labelsTr_revision_report" / p).stat().st_size > 1000 for p in rep["overlays"])
    assert (ds / "labelsTr_revision_report" / "report.csv").read_text().count("\n") == 7


def test_rerun_starts_from_preserved_originals(toy2d):
    ds, truth = toy2d
    originals = tree_digest(ds / "labelsTr")
    rv.revise_dataset(ds, model_step=TruthStep(truth), progress=False, log=lambda s: None, report=False)
    step = TruthStep(truth)
    rv.revise_dataset(ds, model_step=step, progress=False, log=lambda s: None, report=False)
    assert tree_digest(ds / "labelsTr_imperfect") == originals
    # the second run fed the network the ORIGINAL imperfect label, not the first run's revision
    imperfect = _read(ds / "labelsTr_imperfect" / "toy_004.png")
    np.testing.assert_array_equal(step.seen_label_channels["toy_004"][0].squeeze(), (imperfect == 1))
    assert not np.array_equal(imperfect, _read(ds / "labelsTr" / "toy_004.png"))


@pytest.mark.parametrize("failure", ["model_raises", "interrupt_before_swap", "bad_prediction_shape"])
def test_failed_run_leaves_labels_untouched(toy2d, failure, monkeypatch):
    ds, truth = toy2d
    before = tree_digest(ds / "labelsTr")
    if failure == "model_raises":
        step, exc = TruthStep(truth, fail=RuntimeError("training diverged")), RuntimeError
    elif failure == "bad_prediction_shape":
        step, exc = TruthStep(truth, bad_shape=True), RuntimeError
    else:
        step, exc = TruthStep(truth), KeyboardInterrupt
        real = rv.swap_in_folder

        def interrupted(tmp, target):
            raise KeyboardInterrupt

        monkeypatch.setattr(rv, "swap_in_folder", interrupted)
    with pytest.raises(exc):
        rv.revise_dataset(ds, model_step=step, progress=False, log=lambda s: None)
    assert tree_digest(ds / "labelsTr") == before
    assert tree_digest(ds / "labelsTr_imperfect") == before
    assert not (ds / "labelsTr_revision.json").exists() and not (ds / "noise_maps").exists()
    assert not list(ds.glob("*.tmp-*"))
    if failure == "interrupt_before_swap":
        monkeypatch.setattr(rv, "swap_in_folder", real)
    # a later successful run works from the preserved originals
    rv.revise_dataset(ds, model_step=TruthStep(truth), progress=False, log=lambda s: None, report=False)
    np.testing.assert_array_equal(_read(ds / "labelsTr" / "toy_005.png"), _read(truth / "toy_005.png"))


def test_cli_failure_exit_code(toy2d, monkeypatch, capsys):
    ds, truth = toy2d
    before = tree_digest(ds / "labelsTr")
    monkeypatch.setattr(rv, "NnUNetModelStep", lambda **kw: TruthStep(truth, fail=RuntimeError("boom")))
    assert main(["-d", str(ds), "--no_pbar", "-device", "cpu"]) == 1
    assert "labelsTr/ was not changed" in capsys.readouterr().err
    assert tree_digest(ds / "labelsTr") == before


def test_cli_report_failure_says_the_labels_were_revised(toy2d, monkeypatch, capsys):
    """A report that fails after the labels were written must not claim labelsTr/ was left alone: exit 1, the
    message says where the revised labels are and how to write the report again, and that command works."""
    import nnunet_noisylabels.revision.report as report

    ds, truth = toy2d
    monkeypatch.setattr(rv, "NnUNetModelStep", lambda **kw: TruthStep(truth))
    real = report.write_revision_report

    def broken(*a, **kw):
        raise RuntimeError("no report today")

    monkeypatch.setattr(report, "write_revision_report", broken)
    assert main(["-d", str(ds), "--no_pbar", "-device", "cpu", "--truth", str(truth)]) == 1
    err = capsys.readouterr().err
    assert "labels were revised" in err and "was not changed" not in err and "no report today" in err
    np.testing.assert_array_equal(_read(ds / "labelsTr" / "toy_005.png"), _read(truth / "toy_005.png"))
    monkeypatch.setattr(report, "write_revision_report", real)
    again = err.split("Write it again with: ")[1].split()
    assert again[:1] == ["nnUNetv2_nl_revise"] and "--report_only" in again
    assert main(again[1:] + ["--no_pbar"]) == 0
    assert (ds / "labelsTr_revision_report" / "report.json").is_file()


def test_interrupted_swap_is_recovered(toy2d):
    ds, truth = toy2d
    before = tree_digest(ds / "labelsTr")
    # die between the two renames of a swap: labelsTr moved aside, new one not yet in place
    os.rename(ds / "labelsTr", ds / "labelsTr.old-deadbeef")
    (ds / "labelsTr.tmp-cafebabe").mkdir()
    done = rv.recover_interrupted_swap(ds)
    assert any("restored labelsTr" in d for d in done)
    assert tree_digest(ds / "labelsTr") == before and not list(ds.glob("labelsTr.*"))


def test_output_dataset_mode_leaves_source_untouched(toy2d, tmp_path):
    ds, truth = toy2d
    before = tree_digest(ds)
    rv.revise_dataset(ds, model_step=TruthStep(truth), output_dataset="Dataset102_ToyRevised", progress=False,
                      log=lambda s: None, report=False)
    assert tree_digest(ds) == before
    out = tmp_path / "raw" / "Dataset102_ToyRevised"
    assert json.loads((out / "dataset.json").read_text())["name"] == "Dataset102_ToyRevised"
    assert tree_digest(out / "labelsTr_imperfect") == tree_digest(ds / "labelsTr")
    assert tree_digest(out / "labelsTr_clean") == tree_digest(ds / "labelsTr_clean")
    assert tree_digest(out / "imagesTr") == tree_digest(ds / "imagesTr")
    np.testing.assert_array_equal(_read(out / "labelsTr" / "toy_002.png"), _read(truth / "toy_002.png"))
    assert json.loads((out / "labelsTr_revision.json").read_text())["mode"] == "new_dataset"
    with pytest.raises(ValueError, match="already exists"):
        rv.revise_dataset(ds, model_step=TruthStep(truth), output_dataset="Dataset102_ToyRevised",
                          progress=False, log=lambda s: None)


def test_report_without_truth_ranks_by_change(toy2d):
    from nnunet_noisylabels.revision.report import write_revision_report

    ds, truth = toy2d
    rv.revise_dataset(ds, model_step=TruthStep(truth), progress=False, log=lambda s: None, report=False)
    rep = write_revision_report(ds, num_overlays=1)
    assert rep["mean"]["dice_revised"] is None and rep["ranked_by"].startswith("fraction changed")
    assert rep["mean"]["num_cases"] == 4
    assert rep["cases"]["toy_000"]["source"] == "clean"
    assert len(rep["overlays"]) == 2 and "|" in (ds / "labelsTr_revision_report" / "report.md").read_text()
    # later, with the truth at hand, from the command line
    labels_before = tree_digest(ds / "labelsTr")
    assert main(["-d", str(ds), "--report_only", "--truth", str(truth), "--no_pbar"]) == 0
    rep = json.loads((ds / "labelsTr_revision_report" / "report.json").read_text())
    assert rep["mean"]["dice_revised"] == pytest.approx(1.0) and tree_digest(ds / "labelsTr") == labels_before


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
    wrapped = rv._branches_as_noise_code(net, K)
    out = wrapped(torch.zeros(2, 1, 2, 2))
    assert out.shape == (2, len(rv.NOISE_MAP_LABELS), 2, 2) and net.eval_output == "fused"
    # flagged where any FOREGROUND channel's logit > 0 (the background channels' 5 are ignored):
    # over flags [[1, 0], [0, 1]], under flags [[1, 1], [0, 0]]
    np.testing.assert_array_equal(out.argmax(1)[0].numpy(), [[rv.NOISE_SWAP, rv.NOISE_UNDER],
                                                             [rv.NOISE_NONE, rv.NOISE_OVER]])
    assert torch.allclose(out.exp().sum(1), torch.ones(2, 2, 2))  # joint probabilities of the two flags

    # nnU-Net averages logits over windows and mirrors, then takes the argmax: that must flag where the averaged
    # branch logit is positive, as predicting each branch alone would
    g = torch.Generator().manual_seed(0)
    o1, o2, u1, u2 = (4 * torch.randn(K, 8, 8, generator=g) for _ in range(4))
    mean = (rv._branches_as_noise_code(FakeNIN(o1, u1), K)(torch.zeros(1, 1, 8, 8))
            + rv._branches_as_noise_code(FakeNIN(o2, u2), K)(torch.zeros(1, 1, 8, 8))) / 2
    o_avg = ((o1 + o2) / 2)[1:].amax(0)
    u_avg = ((u1 + u2) / 2)[1:].amax(0)
    expected = (o_avg > 0).long() * rv.NOISE_OVER + (u_avg > 0).long() * rv.NOISE_UNDER
    both_max = (o1[1:].argmax(0) == o2[1:].argmax(0)) & (u1[1:].argmax(0) == u2[1:].argmax(0))
    # (amax and mean commute where both windows agree on the strongest foreground class)
    np.testing.assert_array_equal(mean.argmax(1)[0][both_max].numpy(), expected[both_max].numpy())
    assert both_max.sum() > 20

    # the predictor loads checkpoints into the wrapper: they must land in the wrapped network
    wrapped.load_state_dict({"w": torch.ones(1)}, strict=False)
    assert net.w.item() == 1.0


def test_branch_noise_maps_are_saved_for_revised_cases(toy2d):
    ds, truth = toy2d

    class BranchStep(TruthStep):
        def __call__(self, aux, out):
            info = super().__call__(aux, out)
            folder = aux.folder / "noise_branches" / "combined"
            folder.mkdir(parents=True)
            for c in aux.predict_ids:
                code = np.zeros((32, 32), np.uint8)
                code[:4] = rv.NOISE_OVER
                code[4:6] = rv.NOISE_SWAP
                _write_png(code, folder / f"{c}.png")
            return {**info, "branch_noise_maps": str(folder)}

    manifest = rv.revise_dataset(ds, model_step=BranchStep(truth), progress=False, log=lambda s: None,
                                 truth_folder=str(truth))
    assert manifest["noise_maps_from"].startswith("network over/under branches")
    nm = _read(ds / "noise_maps" / "toy_004.png")
    assert (nm[:4] == 1).all() and (nm[4:6] == 3).all() and (nm[6:] == 0).all()
    case = manifest["cases"]["toy_004"]
    assert case["noise_map_from"] == "branches"
    assert case["branch_fraction_over"] == pytest.approx(6 / 32) and case["branch_fraction_under"] == pytest.approx(
        2 / 32)
    # clean cases keep the true noise (imperfect vs clean)
    assert manifest["cases"]["toy_000"]["noise_map_from"] == "difference"
    np.testing.assert_array_equal(_read(ds / "noise_maps" / "toy_000.png"), rv.noise_map(
        _read(ds / "labelsTr_imperfect" / "toy_000.png"), _read(ds / "labelsTr_clean" / "toy_000.png")))
    rep = json.loads((ds / "labelsTr_revision_report" / "report.json").read_text())
    assert rep["cases"]["toy_004"]["flagged_over"] == pytest.approx(6 / 32)
    assert rep["cases"]["toy_004"]["fraction_over"] != rep["cases"]["toy_004"]["flagged_over"]


def test_revise_3d_multiclass_in_place(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    ds, truth = make_dataset(tmp_path / "raw", dim=3, n_cases=4, n_clean=1, num_classes=3)
    originals = tree_digest(ds / "labelsTr")
    manifest = rv.revise_dataset(ds, model_step=TruthStep(truth), progress=False, log=lambda s: None,
                                 truth_folder=str(truth))
    assert tree_digest(ds / "labelsTr_imperfect") == originals
    for i in range(1, 4):
        np.testing.assert_array_equal(_read(ds / "labelsTr" / f"toy_{i:03d}.nii.gz"),
                                      _read(truth / f"toy_{i:03d}.nii.gz"))
    # the revised files keep the geometry of the originals
    import SimpleITK as sitk

    a, b = (sitk.ReadImage(str(ds / d / "toy_002.nii.gz")) for d in ("labelsTr", "labelsTr_imperfect"))
    assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
    assert manifest["cases"]["toy_002"]["fraction_over"] > 0
    rep = json.loads((ds / "labelsTr_revision_report" / "report.json").read_text())
    assert set(rep["cases"]["toy_002"]["dice_revised_per_class"]) == {"1", "2"}
    assert rep["mean"]["dice_revised"] == pytest.approx(1.0) and rep["mean"]["dice_imperfect"] < 0.9
    assert rep["overlays"]


def test_geometry_mismatch_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    ds, _ = make_dataset(tmp_path / "raw", dim=3, n_cases=3, n_clean=1)
    clean = _read(ds / "labelsTr_clean" / "toy_000.nii.gz")
    _write_nii(clean, ds / "labelsTr_clean" / "toy_000.nii.gz", spacing=(2.0, 1.0, 1.0))
    before = tree_digest(ds)
    with pytest.raises(ValueError, match="differ in geometry"):
        rv.validate_inputs(ds)
    assert main(["-d", str(ds), "--no_pbar"]) == 2 and tree_digest(ds) == before


@pytest.mark.parametrize("method, argv, expected", [
    ("nin", [], {"trainer": "NoiseIdentificationTrainer", "configuration": None, "fold": "all"}),
    ("clean_only", [], {"trainer": "nnUNetTrainer"}),
    ("nin", ["-tr", "NoiseIdentificationTrainer_5epochs", "-c", "2d", "-np", "2"],
     {"trainer": "NoiseIdentificationTrainer_5epochs", "configuration": "2d", "num_processes": 2}),
])
def test_cli_passes_options_to_model_step(toy2d, monkeypatch, method, argv, expected):
    ds, truth = toy2d
    seen = {}

    def fake_step(**kwargs):
        seen.update(kwargs)
        return TruthStep(truth)

    monkeypatch.setattr(rv, "NnUNetModelStep", fake_step)
    assert main(["-d", ds.name, "--method", method, "-device", "cpu", "--no_pbar", "--no_report"] + argv) == 0
    assert {k: seen[k] for k in expected} == expected and seen["dimensionality"] == 2
    assert json.loads((ds / "labelsTr_revision.json").read_text())["method"] == method
    aux = "Dataset500_ToyNIN" if method == "nin" else "Dataset500_ToyNLclean"
    assert (ds.parent / aux / "dataset.json").is_file()


def test_fold_other_than_all_needs_five_clean_pairs(toy2d):
    ds, truth = toy2d
    with pytest.raises(ValueError, match="use -f all"):
        rv.revise_dataset(ds, model_step=TruthStep(truth), fold="0", progress=False, log=lambda s: None)
    assert not (ds / "labelsTr_imperfect").exists()


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
@pytest.mark.parametrize("method, trainer, dim, num_classes", [
    ("nin", "NoiseIdentificationTrainer_debug", 2, 2),
    ("clean_only", "nnUNetTrainer_debug", 3, 3),
])
def test_end_to_end_through_nnunet(nnunet_env, method, trainer, dim, num_classes, tmp_path):
    """Plan, preprocess, train (a few iterations) and predict through nnU-Net, then check the outcome on disk."""
    import torch

    torch.set_num_threads(1)
    raw = Path(nnunet_env["nnUNet_raw"])
    ds, truth = make_dataset(raw, dim=dim, n_cases=5, n_clean=2, num_classes=num_classes, name="Dataset111_E2E")
    originals = tree_digest(ds / "labelsTr")
    rc = main(["-d", "111", "--method", method, "-tr", trainer, "-device", "cpu", "--no_pbar",
               "--truth", str(truth)])
    assert rc == 0
    aux_name = "Dataset500_E2E" + ("NIN" if method == "nin" else "NLclean")
    assert (raw / aux_name / "dataset.json").is_file()
    config = "2d" if dim == 2 else "3d_fullres"
    model = Path(nnunet_env["nnUNet_results"]) / aux_name / f"{trainer}__nnUNetPlans__{config}"
    assert (model / "fold_all" / "checkpoint_final.pth").is_file()
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
        lab = _read(ds / "labelsTr" / f"toy_{i:03d}{fe}")
        assert lab.shape == _read(truth / f"toy_{i:03d}{fe}").shape and lab.max() < num_classes
        if i < 2:
            np.testing.assert_array_equal(lab, _read(ds / "labelsTr_clean" / f"toy_{i:03d}{fe}"))
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


# ------------------------------------------------------------------------------------------------ consistency gate
def test_relative_change_golden():
    from nnunet_noisylabels.revision.consistency import relative_change

    imp = np.array([[0, 1, 1, 0], [0, 1, 2, 0]])
    rev = np.array([[0, 1, 0, 0], [1, 1, 1, 0]])
    # union of foreground: 5 voxels; changed: (0,2) 1->0, (1,0) 0->1, (1,2) 2->1
    assert rel_close(relative_change(imp, rev), 3 / 5)
    assert relative_change(imp, imp) == 0.0
    assert relative_change(np.zeros((3, 3)), np.zeros((3, 3))) == 0.0
    with pytest.raises(ValueError, match="shape mismatch"):
        relative_change(imp, rev[:, :3])


def rel_close(a, b):
    return abs(a - b) < 1e-12


def test_consistent_cases_keeps_only_a_group_that_stands_apart():
    from nnunet_noisylabels.revision.consistency import consistent_cases

    rng = np.random.default_rng(0)
    # 30% untouched labels (the model changes ~3% of them), 70% corrupted (~35% changed)
    scores = {f"a{i}": float(rng.uniform(0.01, 0.05)) for i in range(12)}
    scores.update({f"b{i}": float(rng.uniform(0.25, 0.45)) for i in range(28)})
    kept, info = consistent_cases(scores)
    assert kept == {f"a{i}" for i in range(12)}
    assert info["applied"] and info["num_kept"] == 12 and info["ratio"] > 3
    assert len(info["splits"]) == 2 and "no second group" in info["splits"][1]["reason"]  # the untouched don't split
    # every label corrupted alike: one broad group, nothing kept
    alike = {f"c{i}": float(v) for i, v in enumerate(rng.normal(0.3, 0.05, 40).clip(0.05))}
    kept, info = consistent_cases(alike)
    assert kept == set() and not info["applied"] and "not apart" in info["reason"]
    # three kinds of labels (as measured on the 3-class alpha/beta map with a network trained on moved labels):
    # untouched ~0.03, dilated ~0.23, moved or eroded 0.3-0.56; one split would keep the dilated ones too
    three = {f"u{i}": float(v) for i, v in enumerate(rng.uniform(0.006, 0.077, 40))}
    three.update({f"d{i}": float(v) for i, v in enumerate(rng.uniform(0.206, 0.254, 34))})
    three.update({f"m{i}": float(v) for i, v in enumerate(rng.uniform(0.293, 0.564, 58))})
    kept, info = consistent_cases(three)
    assert kept == {f"u{i}" for i in range(40)} and info["num_kept"] == 40
    first = info["splits"][0]
    assert first["ratio"] >= 3 and first["threshold"] > 0.206  # the first split keeps untouched + dilated
    assert len(info["splits"]) == 3 and info["ratio"] == info["splits"][1]["ratio"]
    # the same three kinds, but the first split falls above the dilated ones and is not apart (measured with a
    # network trained on dilated/eroded label inputs: untouched 0.03-0.12, dilated 0.22-0.28, moved 0.30-0.40,
    # eroded 0.48-0.52; ratio 2.96): its low side holds the untouched labels as a group of their own
    r = np.random.default_rng(0)  # a draw whose first split lies above the dilated ones (others split below them)
    middle = {f"u{i}": float(v) for i, v in enumerate(r.uniform(0.03, 0.08, 40))}
    middle.update({f"d{i}": float(v) for i, v in enumerate(r.uniform(0.22, 0.28, 34))})
    middle.update({f"m{i}": float(v) for i, v in enumerate(r.uniform(0.30, 0.40, 30))})
    middle.update({f"e{i}": float(v) for i, v in enumerate(r.uniform(0.48, 0.52, 28))})
    kept, info = consistent_cases(middle)
    assert kept == {f"u{i}" for i in range(40)} and info["applied"]
    first, second = info["splits"][:2]
    assert first["ratio"] < 3 and "not apart" in first["reason"] and first["threshold"] > 0.27
    assert second["num_cases"] == 74 and second["separability"] >= 0.9 and info["ratio"] == second["ratio"]
    # untouched labels whose scores are skewed towards 0 split at a ratio above 3 by chance, but not into two groups:
    # all of them are kept
    skewed = {f"u{i}": float(v) for i, v in enumerate(rng.exponential(0.03, 40).clip(0.002, 0.12))}
    skewed.update({f"m{i}": float(v) for i, v in enumerate(rng.uniform(0.3, 0.5, 40))})
    kept, info = consistent_cases(skewed)
    assert kept == {f"u{i}" for i in range(40)}
    assert info["splits"][1]["ratio"] >= 3 and info["splits"][1]["separability"] < 0.9
    # too few cases to split, or all alike
    assert consistent_cases({k: scores[k] for k in list(scores)[:5]})[0] == set()
    assert consistent_cases({f"d{i}": 0.2 for i in range(10)})[1]["reason"] == "all cases changed alike"
    with pytest.raises(ValueError, match="min_ratio"):
        consistent_cases(scores, min_ratio=1.0)


class NearTruthStep(TruthStep):
    """Fake model step with a model's small error: the true label minus one foreground voxel."""

    def __call__(self, aux, out):
        info = super().__call__(aux, out)
        for c in aux.predict_ids:
            lab = _read(out / f"{c}.png")
            first = tuple(np.argwhere(lab > 0)[0])
            lab[first] = 0
            _write_png(lab, out / f"{c}.png")
        return info


@pytest.mark.parametrize("keep", [True, False])
def test_revision_keeps_untouched_labels_the_model_agrees_with(tmp_path, keep):
    ds, truth = make_dataset(tmp_path / "raw", n_cases=16, n_clean=2)
    untouched = [f"toy_{i:03d}" for i in range(2, 8)]  # their imperfect label is already correct
    for c in untouched:
        shutil.copy(truth / f"{c}.png", ds / "labelsTr" / f"{c}.png")
    manifest = rv.revise_dataset(ds, model_step=NearTruthStep(truth), aux_folder=str(tmp_path / "aux"),
                                 keep_consistent=keep, progress=False, log=lambda s: None)
    gate = manifest["consistency_gate"]
    assert gate["applied"] is keep
    for i in range(2, 16):
        c = f"toy_{i:03d}"
        lab = _read(ds / "labelsTr" / f"{c}.png")
        predicted = _read(tmp_path / "aux" / "predictionsTs" / f"{c}.png")
        if keep and c in untouched:
            np.testing.assert_array_equal(lab, _read(truth / f"{c}.png"))  # the correct label survives
            assert manifest["cases"][c]["kept_imperfect"] and manifest["cases"][c]["consistency_score"] < 0.05
        else:
            np.testing.assert_array_equal(lab, predicted)
            assert "kept_imperfect" not in manifest["cases"][c]
    if keep:
        assert gate["num_kept"] == len(untouched)


# ------------------------------------------------------------------------------------------------ ensemble method
class ProbStep:
    """Fake model step that writes what ``nnUNetPredictor(save_probabilities=True)`` writes: per case a label file,
    ``.npz`` probabilities (K, *label shape) and ``.pkl`` image properties. Its probabilities put 0.75 on the true
    class and 0.25 on the next one, except on ``wrong`` voxels (a function of the case's truth) where 0.6 goes to
    the wrong class: alone it mislabels those voxels, averaged with a step that is wrong elsewhere it is right."""

    def __init__(self, truth_dir: Path, wrong, num_classes: int = 2):
        self.truth_dir, self.wrong, self.K, self.calls = truth_dir, wrong, num_classes, []

    def __call__(self, aux: rv.AuxDataset, out: Path) -> dict:
        from batchgenerators.utilities.file_and_folder_operations import save_pickle

        self.calls.append(aux)
        fe = aux.dataset_json["file_ending"]
        rw = reader_writer(aux.dataset_json, aux.images_ts / f"{aux.predict_ids[0]}_0000{fe}")
        for c in aux.predict_ids:
            _, props = rw.read_images([str(aux.images_ts / f"{c}_0000{fe}")])
            truth = rw.read_seg(str(self.truth_dir / f"{c}{fe}"))[0][0].astype(int)
            other = (truth + 1) % self.K
            wrong = self.wrong(truth)
            probs = np.zeros((self.K, *truth.shape), np.float32)
            for cls, w_ok, w_bad in ((truth, 0.75, 0.4), (other, 0.25, 0.6)):
                np.put_along_axis(probs, cls[None], np.where(wrong, w_bad, w_ok)[None].astype(np.float32), 0)
            np.savez_compressed(out / f"{c}.npz", probabilities=probs)
            save_pickle(props, str(out / f"{c}.pkl"))
            rw.write_seg(probs.argmax(0).astype(np.uint8), str(out / f"{c}{fe}"), props)
        return {"fake": True, "method": aux.method}


def _top_half(truth):
    w = np.zeros(truth.shape, bool)
    w[..., : truth.shape[-2] // 2, :] = True
    return w


def test_ensemble_revises_with_the_mean_of_both_models(toy2d):
    """Each member alone mislabels half of every image (a different half); the ensemble's labels are the truth."""
    ds, truth = toy2d
    steps = {"nin": ProbStep(truth, _top_half), "clean_only": ProbStep(truth, lambda t: ~_top_half(t))}
    logged = []
    manifest = rv.revise_dataset(ds, method="ensemble", model_step=steps, progress=False, log=logged.append,
                                 report=False, keep_consistent=False)
    # the members' own labels differ at every voxel: no agreement on the class, and the user is warned
    assert manifest["model"]["member_agreement_dice"] == {"c1": 0.0}
    assert any(line.startswith("Warning: the two revision models disagree on {'c1': 0.0}") for line in logged)
    assert [a.method for a in steps["nin"].calls] == ["nin"]
    assert [a.method for a in steps["clean_only"].calls] == ["clean_only"]
    raw = ds.parent
    assert manifest["method"] == "ensemble"
    assert manifest["aux_dataset"] == ["Dataset500_ToyNIN", "Dataset501_ToyNLclean"]
    assert set(manifest["model"]["members"]) == {"nin", "clean_only"}
    for i in range(2, 6):
        c = f"toy_{i:03d}"
        true = _read(truth / f"{c}.png")
        np.testing.assert_array_equal(_read(ds / "labelsTr" / f"{c}.png"), true)
        for aux in ("Dataset500_ToyNIN", "Dataset501_ToyNLclean"):
            member = raw / aux / "predictionsTs"
            assert (_read(member / f"{c}.png") != true).any()  # each member alone is wrong somewhere
            assert not (member / f"{c}.npz").exists()  # merged probabilities are not kept
    # clean cases keep their clean label; originals preserved
    np.testing.assert_array_equal(_read(ds / "labelsTr" / "toy_000.png"), _read(ds / "labelsTr_clean" / "toy_000.png"))
    assert len(list((ds / "labelsTr_imperfect").iterdir())) == 6


def test_ensemble_without_probabilities_fails_and_leaves_labels(toy2d):
    ds, truth = toy2d
    before = tree_digest(ds / "labelsTr")
    with pytest.raises(RuntimeError, match="Probabilities of 'toy_002' missing"):
        rv.revise_dataset(ds, method="ensemble", model_step=TruthStep(truth), progress=False, log=lambda s: None)
    assert tree_digest(ds / "labelsTr") == before
    with pytest.raises(ValueError, match="a step for each of"):
        rv.revise_dataset(ds, method="ensemble", model_step={"nin": TruthStep(truth)}, progress=False,
                          log=lambda s: None)


def _fake_model_folder(folder: Path, inputs: rv.RevisionInputs, method: str) -> Path:
    """The files a reusable model folder must have (contents faked: the model step is faked too)."""
    (folder / "fold_all").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(rv.aux_dataset_json(inputs, method, folder.name)))
    (folder / "plans.json").write_text("{}")
    (folder / "fold_all" / "checkpoint_final.pth").write_bytes(b"")
    return folder


def test_cli_ensemble_passes_each_members_trainer_and_model(toy2d, monkeypatch):
    ds, truth = toy2d
    seen = []

    def fake_step(**kwargs):
        seen.append(kwargs)
        return ProbStep(truth, _top_half if len(seen) == 1 else (lambda t: ~_top_half(t)))

    monkeypatch.setattr(rv, "NnUNetModelStep", fake_step)
    models = {m: str(_fake_model_folder(ds.parent.parent / "m" / m, rv.validate_inputs(ds), m))
              for m in ("nin", "clean_only")}
    argv = ["-d", ds.name, "--method", "ensemble", "-tr", "NoiseIdentificationTrainer_5epochs", "--model",
            models["nin"], "--clean_only_tr", "nnUNetTrainer_5epochs", "--clean_only_model", models["clean_only"],
            "-device", "cpu", "--no_pbar", "--no_report"]
    assert main(argv) == 0
    got = {(k["trainer"], k["model_folder"], k["save_probabilities"]) for k in seen}
    assert got == {("NoiseIdentificationTrainer_5epochs", models["nin"], True),
                   ("nnUNetTrainer_5epochs", models["clean_only"], True)}
    assert json.loads((ds / "labelsTr_revision.json").read_text())["method"] == "ensemble"


@pytest.mark.slow
def test_ensemble_end_to_end_through_nnunet_and_reuse(nnunet_env):
    """Both members trained and predicted with probabilities through nnU-Net; a re-run on a copy reuses both models
    (no training) and writes the same labels."""
    import torch

    torch.set_num_threads(1)
    raw = Path(nnunet_env["nnUNet_raw"])
    ds, truth = make_dataset(raw, dim=2, n_cases=5, n_clean=2, name="Dataset131_Ens")
    assert main(["-d", "131", "--method", "ensemble", "-tr", "NoiseIdentificationTrainer_debug", "--clean_only_tr",
                 "nnUNetTrainer_debug", "-device", "cpu", "--no_pbar", "--no_report"]) == 0
    manifest = json.loads((ds / "labelsTr_revision.json").read_text())
    assert manifest["aux_dataset"] == ["Dataset500_EnsNIN", "Dataset501_EnsNLclean"]
    members = manifest["model"]["members"]
    assert 0.0 <= manifest["model"]["member_agreement_dice"]["c1"] <= 1.0
    assert members["nin"]["trainer"] == "NoiseIdentificationTrainer_debug"
    assert members["clean_only"]["trainer"] == "nnUNetTrainer_debug"
    assert manifest["noise_maps_from"].startswith("network")  # from the noise identification member's branches
    for i in range(5):
        lab = _read(ds / "labelsTr" / f"toy_{i:03d}.png")
        assert lab.shape == (32, 32) and lab.max() <= 1
    copy = raw / "Dataset132_EnsCopy"
    shutil.copytree(ds, copy, ignore=shutil.ignore_patterns("labelsTr", "labelsTr_revision*", "noise_maps"))
    os.rename(copy / "labelsTr_imperfect", copy / "labelsTr")
    assert main(["-d", "132", "--method", "ensemble", "--model", members["nin"]["model_folder"],
                 "--clean_only_model", members["clean_only"]["model_folder"], "-device", "cpu", "--no_pbar",
                 "--no_report"]) == 0
    m2 = json.loads((copy / "labelsTr_revision.json").read_text())["model"]["members"]
    assert not m2["nin"]["trained_here"] and not m2["clean_only"]["trained_here"]
    assert tree_digest(copy / "labelsTr") == tree_digest(ds / "labelsTr")


# ------------------------------------------------------------------------------------------------ realignment
class FollowingStep:
    """Fake noise identification network that follows a misplaced label half of the way: it predicts the true label
    moved by half the offset between the label input's centroid and the truth's (0 for labels in place)."""

    def __init__(self, truth_dir):
        self.truth_dir, self.calls = truth_dir, []

    def __call__(self, aux, out):
        self.calls.append(aux)
        fe = aux.dataset_json["file_ending"]
        _, chans = label_channel_indices(aux.dataset_json)
        rw = reader_writer(aux.dataset_json, aux.images_ts / f"{aux.predict_ids[0]}_0000{fe}")
        for c in aux.predict_ids:
            label = rw.read_seg(str(aux.images_ts / f"{c}_{chans[0]:04d}{fe}"))[0][0, 0] > 0
            truth = _read(self.truth_dir / f"{c}{fe}")
            offset = np.array(ndimage.center_of_mass(label)) - np.array(ndimage.center_of_mass(truth > 0))
            _write_png(np.roll(truth, tuple(np.rint(offset / 2).astype(int)), axis=(0, 1)), out / f"{c}{fe}")
        return {"fake": True}


@pytest.mark.parametrize("rounds", [0, 1, 3])
def test_revision_realigns_misplaced_labels_and_predicts_them_again(tmp_path, rounds):
    ds, truth = make_dataset(tmp_path / "raw", n_cases=8, n_clean=2)  # imperfect = truth dilated by 2 px
    misplaced = ["toy_002", "toy_003", "toy_004"]
    for c in misplaced:  # drawn 6 px off
        _write_png(np.roll(_read(truth / f"{c}.png"), 6, axis=1), ds / "labelsTr" / f"{c}.png")
    step = FollowingStep(truth)
    realign = rounds > 0
    manifest = rv.revise_dataset(ds, model_step=step, aux_folder=str(tmp_path / "aux"), realign=realign,
                                 realign_rounds=max(rounds, 1), keep_consistent=False, progress=False,
                                 log=lambda s: None, report=realign)
    scores = {c: dice(_read(ds / "labelsTr" / f"{c}.png"), _read(truth / f"{c}.png"))
              for c in manifest["cases"] if manifest["cases"][c]["source"] == "revised"}
    for c in ("toy_005", "toy_006", "toy_007"):  # dilated in place: predicted once, never moved
        assert scores[c] == 1.0 and "realigned" not in manifest["cases"][c]
    if not realign:
        assert len(step.calls) == 1 and manifest["realignment"] == {"enabled": False}
        assert all(scores[c] < 0.75 for c in misplaced)  # 3 px off
        return
    assert len(step.calls) == 1 + rounds and all(sorted(a.predict_ids) == misplaced for a in step.calls[1:])
    assert manifest["realignment"]["num_cases"] == 3
    for c in misplaced:
        rec = manifest["cases"][c]
        assert rec["realigned"]["classes"][1]["moved"] and rec["realigned"]["rounds"] == rounds
        assert rec["noise_map_from"] == "difference"
        if rounds == 1:  # the second pass read a label 3 px off instead of 6 and predicts 2 px off
            assert 0.65 < scores[c] < 0.9
        else:  # the label moved onto predictions 2, then 1 px off: the last pass reads it in place
            assert scores[c] == 1.0
    saved = json.loads((ds / "labelsTr_revision.json").read_text())
    assert saved["cases"]["toy_002"]["realigned"]["classes"]["1"]["moved"] is True
    report = json.loads((ds / "labelsTr_revision_report" / "report.json").read_text())["cases"]
    assert {c for c, r in report.items() if r["decision"] == "realigned, predicted again"} == set(misplaced)
    assert report["toy_005"]["decision"] == "predicted" and report["toy_000"]["decision"] == "clean label"


class ProbFollowingStep(FollowingStep):
    """Fake member of an ensemble that writes nnU-Net's probabilities: it predicts the true label moved by ``follow``
    times the offset of the label input (1: the network copies a misplaced label; 0: the clean-only model, blind to
    the label), with probability ``confidence`` for the class it predicts."""

    def __init__(self, truth_dir, follow: float, confidence: float):
        super().__init__(truth_dir)
        self.follow, self.confidence = follow, confidence

    def __call__(self, aux, out):
        from batchgenerators.utilities.file_and_folder_operations import save_pickle

        self.calls.append(aux)
        fe = aux.dataset_json["file_ending"]
        rw = reader_writer(aux.dataset_json, aux.images_ts / f"{aux.predict_ids[0]}_0000{fe}")
        for c in aux.predict_ids:
            _, props = rw.read_images([str(aux.images_ts / f"{c}_0000{fe}")])
            truth = _read(self.truth_dir / f"{c}{fe}")
            pred = truth
            if self.follow:
                label = rw.read_seg(str(aux.images_ts / f"{c}_0001{fe}"))[0][0, 0] > 0
                offset = np.array(ndimage.center_of_mass(label)) - np.array(ndimage.center_of_mass(truth > 0))
                pred = np.roll(truth, tuple(np.rint(offset * self.follow).astype(int)), axis=(0, 1))
            fg = np.where(pred > 0, self.confidence, 1 - self.confidence).astype(np.float32)
            np.savez_compressed(out / f"{c}.npz", probabilities=np.stack([1 - fg, fg])[:, None])
            save_pickle(props, str(out / f"{c}.pkl"))
            rw.write_seg(pred[None].astype(np.uint8), str(out / f"{c}{fe}"), props)
        return {"fake": True, "method": aux.method}


def test_ensemble_realigns_onto_the_average_of_both_models(tmp_path):
    """A network that copies a misplaced label never moves it against its own prediction; the ensemble's average,
    drawn to the truth by the clean-only member, does: the label moves, the network reads it in place, and the
    ensemble's revision is the truth."""
    ds, truth = make_dataset(tmp_path / "raw", n_cases=8, n_clean=2)
    misplaced = ["toy_002", "toy_003", "toy_004"]
    for c in misplaced:
        _write_png(np.roll(_read(truth / f"{c}.png"), 6, axis=1), ds / "labelsTr" / f"{c}.png")
    steps = {"nin": ProbFollowingStep(truth, follow=1.0, confidence=0.6),
             "clean_only": ProbFollowingStep(truth, follow=0.0, confidence=0.95)}
    manifest = rv.revise_dataset(ds, method="ensemble", model_step=steps, aux_folder=str(tmp_path / "aux"),
                                 realign=True, realign_rounds=2, keep_consistent=False, progress=False,
                                 log=lambda s: None, report=False)
    assert manifest["realignment"]["num_cases"] == 3
    assert [sorted(a.predict_ids) for a in steps["nin"].calls[1:]] == [misplaced, misplaced]
    assert len(steps["clean_only"].calls) == 1  # blind to the label: predicted once
    for c in misplaced:
        assert manifest["cases"][c]["realigned"]["rounds"] == 2
        np.testing.assert_array_equal(_read(ds / "labelsTr" / f"{c}.png"), _read(truth / f"{c}.png"))
    for member in ("nin", "clean_only"):  # the probabilities kept for the rounds are gone in the end
        assert not list((tmp_path / "aux" / member / "predictionsTs").glob("*.npz"))


def test_realign_needs_the_network(toy2d):
    ds, truth = toy2d
    before = sorted(p.name for p in ds.iterdir())
    with pytest.raises(rv.RevisionError, match="clean_only"):
        rv.revise_dataset(ds, method="clean_only", model_step=FollowingStep(truth), realign=True, progress=False,
                          log=lambda s: None)
    with pytest.raises(rv.RevisionError, match="realign_rounds"):
        rv.revise_dataset(ds, model_step=FollowingStep(truth), realign=True, realign_rounds=0, progress=False,
                          log=lambda s: None)
    with pytest.raises(rv.RevisionError, match="realign_min_gain"):
        rv.revise_dataset(ds, model_step=FollowingStep(truth), realign=True, realign_min_gain=0, progress=False,
                          log=lambda s: None)
    assert sorted(p.name for p in ds.iterdir()) == before  # nothing written


def test_second_pass_reuses_the_first_pass_model():
    step = rv.NnUNetModelStep(trainer="NoiseIdentificationTrainer", device="cpu")
    second = rv.second_pass_step(step, {"model_folder": "/models/x"})
    assert second.model_folder == "/models/x" and not second.save_noise_maps and second.trainer == step.trainer
    assert step.model_folder is None  # the first step is not changed
    fake = FollowingStep(None)
    assert rv.second_pass_step(fake, {}) is fake


def test_cli_passes_realign_options(toy2d, monkeypatch):
    seen = {}
    monkeypatch.setattr(rv, "revise_dataset", lambda *a, **k: seen.update(k))
    assert main(["-d", str(toy2d[0]), "--realign", "--realign_min_gain", "0.1"]) == 0
    assert seen["realign"] is True and seen["realign_min_gain"] == 0.1 and seen["realign_rounds"] == 3
    assert main(["-d", str(toy2d[0]), "--realign", "--realign_rounds", "1"]) == 0 and seen["realign_rounds"] == 1


def test_links_to_symlinked_images_resolve_from_any_depth(tmp_path):
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "a_0000.png").write_bytes(b"image")
    (tmp_path / "noisy").mkdir()
    os.symlink("../clean/a_0000.png", tmp_path / "noisy" / "a_0000.png")  # as nnUNetv2_nl_corrupt links images
    deep = tmp_path / "aux" / "realigned" / "imagesTs"
    deep.mkdir(parents=True)
    rv._link_or_copy(tmp_path / "noisy" / "a_0000.png", deep / "a_0000.png")
    assert (deep / "a_0000.png").read_bytes() == b"image"


@pytest.mark.slow
def test_realignment_rounds_through_nnunet(nnunet_env, monkeypatch):
    """The realignment's extra passes go through nnU-Net's predictor with the model of the first pass (no second
    training), from inputs written one folder deeper; every case is declared misplaced here (by a patched decision,
    so the test does not hang on what a few training iterations learn)."""
    import torch

    from nnunet_noisylabels.revision import realign

    torch.set_num_threads(1)
    raw = Path(nnunet_env["nnUNet_raw"])
    ds, truth = make_dataset(raw, dim=2, n_cases=5, n_clean=2, name="Dataset141_Realign")
    seen = []

    def always_move(imperfect, reference, classes, spacing=None, min_gain=0.05):
        seen.append(reference.copy())
        return np.roll(imperfect, 1, axis=0), {int(c): {"moved": True} for c in classes}

    monkeypatch.setattr(realign, "realign_label_map", always_move)
    assert main(["-d", "141", "-tr", "NoiseIdentificationTrainer_debug", "-device", "cpu", "--no_pbar", "--no_report",
                 "--realign", "--realign_rounds", "2", "--aux_id", "541"]) == 0
    manifest = json.loads((ds / "labelsTr_revision.json").read_text())
    assert manifest["realignment"] == {"enabled": True, "min_gain": 0.05, "rounds": 2, "num_cases": 3}
    assert manifest["model"]["trained_here"] is True
    assert len(list(Path(nnunet_env["nnUNet_results"]).rglob("checkpoint_final.pth"))) == 1
    aux = raw / "Dataset541_RealignNIN"
    assert len(seen) == 6  # 3 cases, 2 rounds
    for c in ("toy_002", "toy_003", "toy_004"):
        rec = manifest["cases"][c]
        assert rec["realigned"]["rounds"] == 2 and rec["noise_map_from"] == "difference"
        # the label input of the last round is the rolled imperfect label, and its prediction is the revised label
        np.testing.assert_array_equal(_read(aux / "realigned" / "imagesTs" / f"{c}_0001.png"),
                                      np.roll(_read(ds / "labelsTr_imperfect" / f"{c}.png"), 1, axis=0))
        np.testing.assert_array_equal(_read(ds / "labelsTr" / f"{c}.png"),
                                      _read(aux / "realigned" / "predictionsTs" / f"{c}.png"))
