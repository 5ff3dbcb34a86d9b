"""Label revision, the auxiliary dataset: layout per method, its name and its tie to the source dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
from revision_support import TruthStep, make_dataset, read_array, tree_digest

from nnunet_noisylabels.revision import api as rv
from nnunet_noisylabels.revision import auxiliary as rv_aux
from nnunet_noisylabels.revision import inputs as rv_inputs
from nnunet_noisylabels.revision.aux_dataset import label_channel_indices


def test_aux_dataset_layout_nin_and_clean_only(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    ds, _ = make_dataset(tmp_path / "raw", dim=3, n_cases=4, n_clean=2, num_classes=3)
    inp = rv_inputs.validate_inputs(ds)
    assert inp.dimensionality == 3 and inp.num_classes == 3
    aux = rv_aux.build_aux_dataset(inp, tmp_path / "aux", "nin")
    dj = json.loads((tmp_path / "aux" / "dataset.json").read_text())
    assert label_channel_indices(dj) == (1, [1, 2])
    assert dj["channel_names"] == {"0": "MRI", "1": "noNorm", "2": "noNorm"} and dj["numTraining"] == 2
    assert sorted(p.name for p in (aux.folder / "labelsTr").iterdir()) == ["toy_000.nii.gz", "toy_001.nii.gz"]
    assert len(list((aux.folder / "imagesTr").iterdir())) == 2 * 3
    assert len(list((aux.folder / "imagesTs").iterdir())) == 2 * 3
    imperfect = read_array(ds / "labelsTr" / "toy_003.nii.gz")
    for k in (1, 2):
        ch = read_array(aux.folder / "imagesTs" / f"toy_003_{k:04d}.nii.gz")
        np.testing.assert_array_equal(ch, (imperfect == k).astype(np.uint8))
    # the target of the clean pairs is the CLEAN label
    np.testing.assert_array_equal(read_array(aux.folder / "labelsTr" / "toy_001.nii.gz"),
                                  read_array(ds / "labelsTr_clean" / "toy_001.nii.gz"))
    aux2 = rv_aux.build_aux_dataset(inp, tmp_path / "aux_c", "clean_only")
    assert aux2.dataset_json["channel_names"] == {"0": "MRI"} and "nl_label_channels" not in aux2.dataset_json
    assert sorted(p.name for p in (aux2.folder / "imagesTs").iterdir()) == ["toy_002_0000.nii.gz",
                                                                             "toy_003_0000.nii.gz"]


def test_aux_dataset_name_choice(toy2d, tmp_path):
    ds, _ = toy2d
    assert rv_aux.choose_aux_dataset_name(ds, "nin") == "Dataset500_ToyNIN"
    (tmp_path / "raw" / "Dataset500_Other").mkdir()
    assert rv_aux.choose_aux_dataset_name(ds, "nin") == "Dataset501_ToyNIN"
    (tmp_path / "raw" / "Dataset501_ToyNIN").mkdir()
    (tmp_path / "raw" / "Dataset501_ToyNIN" / "dataset.json").write_text(json.dumps(
        {"nl_source_dataset": ds.name}))
    assert rv_aux.choose_aux_dataset_name(ds, "nin") == "Dataset501_ToyNIN"  # re-runs reuse it
    assert rv_aux.choose_aux_dataset_name(ds, "clean_only") == "Dataset502_ToyNLclean"
    with pytest.raises(ValueError, match="already taken"):
        rv_aux.choose_aux_dataset_name(ds, "nin", aux_id=500)


def test_aux_dataset_belongs_to_its_source(toy2d, tmp_path):
    """Two sources with the same name part (Dataset101_Toy, Dataset102_Toy) never share an auxiliary dataset: the
    second gets its own id, an explicit --aux_id of the other's is refused, and its folder is never deleted."""
    ds, truth = toy2d
    rv.revise_dataset(ds, model_step=TruthStep(truth), progress=False, log=lambda s: None, report=False)
    first = tmp_path / "raw" / "Dataset500_ToyNIN"
    assert json.loads((first / "dataset.json").read_text())["nl_source_dataset"] == ds.name
    before = tree_digest(first)
    twin, twin_truth = make_dataset(tmp_path / "raw", name="Dataset102_Toy")
    assert rv_aux.choose_aux_dataset_name(twin, "nin") == "Dataset501_ToyNIN"
    with pytest.raises(ValueError, match="built from Dataset101_Toy"):
        rv_aux.choose_aux_dataset_name(twin, "nin", aux_id=500)
    with pytest.raises(ValueError, match="built from Dataset101_Toy"):
        rv_aux.check_aux_folder_replaceable(first, twin.name)
    rv.revise_dataset(twin, model_step=TruthStep(twin_truth), progress=False, log=lambda s: None, report=False)
    assert tree_digest(first) == before
    assert json.loads((tmp_path / "raw" / "Dataset501_ToyNIN" / "dataset.json").read_text())[
        "nl_source_dataset"] == twin.name
    assert rv_aux.choose_aux_dataset_name(ds, "nin") == "Dataset500_ToyNIN"  # each source finds its own again
    # a folder of that name that does not say where it came from is neither reused nor replaced
    (tmp_path / "raw" / "Dataset600_ToyNIN").mkdir()
    with pytest.raises(ValueError, match="does not say"):
        rv_aux.choose_aux_dataset_name(ds, "nin", aux_id=600)
