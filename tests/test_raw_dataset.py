"""Reading, validating and safely writing labels of nnU-Net raw datasets."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_noisylabels.common.raw_dataset import (RawDatasetError, check_label_values, check_same_geometry,
                                                      image_files, load_dataset_json, num_classes, read_images,
                                                      read_label, resolve_raw_dataset, spatial_view,
                                                      training_case_ids, write_label_atomic)


@pytest.mark.parametrize("fixture", ["dataset_2d", "dataset_3d_multiclass"])
def test_read_write_roundtrip(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    dj = load_dataset_json(folder)
    cases = training_case_ids(folder, dj)
    assert len(cases) == dj["numTraining"]
    seg, props = read_label(folder / "labelsTr" / f"{cases[0]}{dj['file_ending']}", dj)
    assert set(np.unique(seg)) <= set(range(num_classes(dj))) and seg.max() > 0
    img, iprops = read_images(image_files(folder, cases[0], dj), dj)
    assert img.shape[1:] == seg.shape
    out = tmp_path / "out" / f"copy{dj['file_ending']}"
    write_label_atomic(seg, out, props, dj)
    again, _ = read_label(out, dj)
    np.testing.assert_array_equal(again, seg)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind


@pytest.mark.parametrize("fixture,ndim", [("dataset_2d", 2), ("dataset_3d_multiclass", 3)])
def test_spatial_view_drops_the_2d_dummy_axis(fixture, ndim, request):
    folder = request.getfixturevalue(fixture)
    dj = load_dataset_json(folder)
    path = folder / "labelsTr" / f"{training_case_ids(folder, dj)[0]}{dj['file_ending']}"
    seg, props = read_label(path, dj)
    view, spacing = spatial_view(seg[None], props["spacing"])
    assert view.ndim == ndim == len(spacing)
    assert spacing == [float(s) for s in props["spacing"]][-ndim:]
    np.testing.assert_array_equal(view, seg.reshape(view.shape))
    with pytest.raises(ValueError, match="shape"):
        spatial_view(seg, props["spacing"])


def test_resolve_by_id_and_name(dataset_2d):
    assert resolve_raw_dataset(1) == dataset_2d
    assert resolve_raw_dataset("Dataset001_Synth2D") == dataset_2d
    assert resolve_raw_dataset(str(dataset_2d)) == dataset_2d


def test_unknown_dataset_is_a_clear_error(nnunet_env):
    with pytest.raises(RawDatasetError, match="Unknown dataset 987"):
        resolve_raw_dataset(987)


def test_unknown_label_values_are_reported(dataset_2d):
    dj = load_dataset_json(dataset_2d)
    with pytest.raises(RawDatasetError, match=r"label values \[7\] are not declared"):
        check_label_values(np.array([[0, 1], [7, 0]]), dj, "x.png")
    check_label_values(np.array([[0, 1]]), dj)


def test_geometry_mismatch_is_reported():
    with pytest.raises(RawDatasetError, match="shapes differ"):
        check_same_geometry({}, {}, "case_000", (4, 5), (4, 6))
    with pytest.raises(RawDatasetError, match="spacings differ"):
        check_same_geometry({"spacing": (1, 1, 1)}, {"spacing": (1, 1, 2)}, "case_000")
    check_same_geometry({"spacing": (1, 1, 1)}, {"spacing": (1, 1, 1.0000001)}, "case_000", (2, 2), (2, 2))


def test_corrupt_file_is_a_clear_error(dataset_3d):
    dj = load_dataset_json(dataset_3d)
    bad = dataset_3d / "labelsTr" / f"case_000{dj['file_ending']}"
    bad.write_bytes(b"not a nifti file")
    with pytest.raises(RawDatasetError, match="Could not read label file"):
        read_label(bad, dj)


def test_missing_channel_file_is_reported(dataset_2d):
    dj = load_dataset_json(dataset_2d)
    (dataset_2d / "imagesTr" / "case_001_0000.png").unlink()
    with pytest.raises(RawDatasetError, match="missing image file"):
        image_files(dataset_2d, "case_001", dj)


def test_malformed_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text('{"labels": {"background": 0}}')
    with pytest.raises(RawDatasetError, match="channel_names"):
        load_dataset_json(tmp_path)
