from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from conftest import load_benchmark
from nnunet_noisylabels.cli import corrupt as cli
from nnunet_noisylabels.common.metrics import dice
from nnunet_noisylabels.corruption.dataset import (MANIFEST_NAME, corrupt_dataset, select_cases)
from nnunet_noisylabels.common.raw_dataset import (RawDatasetError, load_dataset_json, read_label,
                                                       write_label_atomic)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def labels_of(folder: Path, sub: str = "labelsTr") -> dict[str, np.ndarray]:
    dj = load_dataset_json(folder)
    ending = dj["file_ending"]
    return {p.name[: -len(ending)]: read_label(p, dj)[0] for p in sorted((folder / sub).iterdir())}


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def test_dilate_2d_layout_manifest_and_source_untouched(dataset_2d):
    before = tree_digest(dataset_2d)
    out = corrupt_dataset(1, 11, "dilate", {"radius": 2}, clean_count=3, seed=0, pbar=False)
    assert tree_digest(dataset_2d) == before
    assert out.name == "Dataset011_Synth2D_dilate" and out.parent == dataset_2d.parent
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left

    src, noisy, clean = labels_of(dataset_2d), labels_of(out), labels_of(out, "labelsTr_clean")
    assert set(noisy) == set(src) and len(clean) == 3
    for case, seg in noisy.items():
        assert not ((src[case] > 0) & (seg == 0)).any()  # dilation only adds
        assert ((seg > 0) & (src[case] == 0)).any()
    for case, seg in clean.items():  # clean subset: byte copies of the source labels
        assert (out / "labelsTr_clean" / f"{case}.png").read_bytes() == \
               (dataset_2d / "labelsTr" / f"{case}.png").read_bytes()

    m = manifest_of(out)
    assert m["source_dataset"] == dataset_2d.name and sorted(m["clean_subset"]) == sorted(clean)
    for case, rec in m["cases"].items():
        assert rec["corrupted"] and rec["noise"] == "dilate"
        assert rec["sampled"]["1"] == {"radius": 2.0}
        assert rec["mean_dice"] == pytest.approx(dice(src[case] == 1, noisy[case] == 1), abs=1e-5)
    assert m["summary"]["mean_dice"] == pytest.approx(np.mean([r["mean_dice"] for r in m["cases"].values()]),
                                                      abs=1e-5)

    # images are links to the unchanged source files; test cases come along
    img = out / "imagesTr" / sorted(os.listdir(out / "imagesTr"))[0]
    assert img.is_symlink() and img.resolve() == (dataset_2d / "imagesTr" / img.name).resolve()
    assert sorted(os.listdir(out / "imagesTs")) == sorted(os.listdir(dataset_2d / "imagesTs"))
    dj = load_dataset_json(out)
    assert dj["name"] == out.name and dj["noisy_labels"]["source_dataset"] == dataset_2d.name
    assert dj["labels"] == load_dataset_json(dataset_2d)["labels"]


def test_alpha_copy_images_and_determinism(dataset_2d):
    a = corrupt_dataset(1, 12, "markov", {"T": 30}, alpha=0.5, clean_fraction=0.25, seed=3, copy_images=True,
                        pbar=False)
    b = corrupt_dataset(1, 13, "markov", {"T": 30}, alpha=0.5, clean_fraction=0.25, seed=3, pbar=False,
                        num_processes=2)
    c = corrupt_dataset(1, 14, "markov", {"T": 30}, alpha=0.5, clean_fraction=0.25, seed=4, pbar=False)
    ma, mb = manifest_of(a), manifest_of(b)
    assert len(ma["corrupted_cases"]) == 6 and len(ma["clean_subset"]) == 3
    assert ma["corrupted_cases"] == mb["corrupted_cases"] and ma["clean_subset"] == mb["clean_subset"]
    la, lb, lc = labels_of(a), labels_of(b), labels_of(c)
    assert all(np.array_equal(la[k], lb[k]) for k in la)  # same seed, 1 or 2 processes: same labels
    assert any(not np.array_equal(la[k], lc[k]) for k in la)
    src = labels_of(dataset_2d)
    for case in la:
        corrupted = case in ma["corrupted_cases"]
        assert ma["cases"][case]["corrupted"] == corrupted
        if not corrupted:
            assert ma["cases"][case]["noise"] is None and ma["cases"][case]["mean_dice"] == 1.0
            assert np.array_equal(la[case], src[case])
    img = next((a / "imagesTr").iterdir())
    assert not img.is_symlink() and img.read_bytes() == (dataset_2d / "imagesTr" / img.name).read_bytes()


def test_box_3d_multiclass(dataset_3d_multiclass):
    out = corrupt_dataset(4, 15, "box", {"margin": 1}, clean_count=2, pbar=False)
    src, noisy = labels_of(dataset_3d_multiclass), labels_of(out)
    for case, seg in noisy.items():
        assert seg.shape == src[case].shape and set(np.unique(seg)) <= {0, 1, 2}
        for c in (1, 2):
            if not (src[case] == c).any():
                continue
            claimed = (seg > 0)
            lab, _ = ndimage.label(src[case] == c, np.ones((3, 3, 3)))
            for sl in ndimage.find_objects(lab):  # the (margin-grown) box is foreground
                assert claimed[sl].all()
            assert (seg[src[case] == c] == c).all()  # original pixels keep their class
    assert manifest_of(out)["summary"]["mean_dice_corrupted"] < 0.95


@pytest.mark.parametrize("dim_fixture", ["dataset_2d", "dataset_3d"])
def test_alpha_beta_hits_beta(dim_fixture, request):
    src_folder = request.getfixturevalue(dim_fixture)
    src_id = 1 if dim_fixture == "dataset_2d" else 3
    out = corrupt_dataset(src_id, 16, "alpha_beta", {"beta": 0.5}, alpha=1.0, pbar=False)
    m = manifest_of(out)
    ratios = [r["changed_ratio"]["1"] for r in m["cases"].values()]
    assert np.mean(ratios) == pytest.approx(0.5, abs=0.05)
    assert max(abs(r - 0.5) for r in ratios) < 0.15
    # Dice implied by the ratio: dilate 2/(2+b), erode 2(1-b)/(2-b), affine ~ 1-b/2
    expected = {"dilate": 0.8, "erode": 2 / 3, "affine": 0.75}
    for rec in m["cases"].values():
        assert rec["mean_dice"] == pytest.approx(expected[rec["noise"]], abs=0.08)
    assert src_folder.is_dir()


def test_empty_label_is_reported(dataset_2d):
    dj = load_dataset_json(dataset_2d)
    path = dataset_2d / "labelsTr" / sorted(os.listdir(dataset_2d / "labelsTr"))[0]
    seg, props = read_label(path, dj)
    write_label_atomic(np.zeros_like(seg), path, props, dj)
    out = corrupt_dataset(1, 17, "erode", {"radius": 1}, pbar=False)
    m = manifest_of(out)
    rec = m["cases"][path.name[:-4]]
    assert rec["empty_classes"] == [1] and rec["mean_dice"] == 1.0
    assert m["summary"]["num_cases_with_empty_classes"] == 1


def test_overwrite_and_refusals(dataset_2d, make_dataset):
    out = corrupt_dataset(1, 18, "erode", {"radius": 1}, pbar=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        corrupt_dataset(1, 18, "erode", {"radius": 1}, pbar=False)
    corrupt_dataset(1, 18, "erode", {"radius": 2}, pbar=False, overwrite=True)
    assert manifest_of(out)["params"] == {"radius": 2}
    make_dataset(19, name="Other", dim=2, num_cases=2, num_clean=0)
    with pytest.raises(FileExistsError, match="already used by Dataset019_Other"):
        corrupt_dataset(1, 19, "erode", pbar=False, overwrite=True)


def test_bad_input_leaves_nothing(dataset_2d, make_dataset):
    raw = dataset_2d.parent
    with pytest.raises(RawDatasetError, match="Unknown dataset"):
        corrupt_dataset(77, 20, "dilate", pbar=False)
    with pytest.raises(ValueError, match="unknown noise type"):
        corrupt_dataset(1, 20, "blur", pbar=False)
    with pytest.raises(ValueError, match="does not take"):
        corrupt_dataset(1, 20, "dilate", {"T": 3}, pbar=False)
    with pytest.raises(ValueError, match="clean_count"):
        corrupt_dataset(1, 20, "dilate", clean_count=13, pbar=False)
    with pytest.raises(ValueError, match="alpha"):
        corrupt_dataset(1, 20, "dilate", alpha=1.5, pbar=False)
    with pytest.raises(ValueError, match="not foreground labels"):
        corrupt_dataset(1, 20, "dilate", labels=[2], pbar=False)
    # a label value that dataset.json does not declare
    dj = load_dataset_json(dataset_2d)
    path = dataset_2d / "labelsTr" / sorted(os.listdir(dataset_2d / "labelsTr"))[-1]
    seg, props = read_label(path, dj)
    bad = seg.copy()
    bad[..., 0, 0] = 5
    write_label_atomic(bad, path, props, dj)
    with pytest.raises(RawDatasetError, match=r"label values \[5\]"):
        corrupt_dataset(1, 20, "dilate", pbar=False)
    # an image/label shape mismatch
    write_label_atomic(seg[..., :40], path, props, dj)
    with pytest.raises(RawDatasetError, match="shapes differ"):
        corrupt_dataset(1, 20, "dilate", pbar=False)
    assert sorted(p.name for p in raw.iterdir()) == [dataset_2d.name]


def test_select_cases():
    ids = [f"c{i}" for i in range(10)]
    corrupted, clean = select_cases(ids, 0, alpha=0.3, clean_count=2)
    assert len(corrupted) == 3 and len(clean) == 2 and set(corrupted) <= set(ids)
    assert select_cases(ids, 0, alpha=0.3, clean_count=2) == (corrupted, clean)
    assert select_cases(ids, 0, alpha=0.0, clean_fraction=0.0) == ([], [])
    with pytest.raises(ValueError, match="not both"):
        select_cases(ids, 0, clean_fraction=0.1, clean_count=1)


def test_cli(dataset_2d_multiclass, capsys):
    rc = cli.main(["-d", "2", "-o", "21", "--noise", "mixture", "--mixture", "dilate=1", "box=1",
                   "--param", "dilate.radius=1,2", "--clean_fraction", "0.25", "--seed", "1", "--no_pbar"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Dataset021_Synth2DMulti_mixture" in out and "mean Dice" in out
    m = manifest_of(dataset_2d_multiclass.parent / "Dataset021_Synth2DMulti_mixture")
    assert {r["noise"] for r in m["cases"].values()} <= {"dilate", "box"} and len(m["clean_subset"]) == 3

    rc = cli.main(["-d", "2", "-o", "22", "--noise", "markov", "--param", "T=5", "class2.T=0", "--name",
                   "Markov", "--no_pbar"])
    assert rc == 0
    m = manifest_of(dataset_2d_multiclass.parent / "Dataset022_Markov")
    assert m["class_params"] == {"2": {"T": 0}}
    assert all(r["sampled"]["2"]["T"] == 0 for r in m["cases"].values() if "2" in r["sampled"])

    for argv, msg in [(["-d", "99", "-o", "23", "--noise", "dilate"], "Unknown dataset"),
                      (["-d", "2", "-o", "23", "--noise", "box", "--beta", "0.5"], "--beta applies"),
                      (["-d", "2", "-o", "23", "--noise", "dilate", "--param", "radius"], "key=value"),
                      (["-d", "2", "-o", "21", "--noise", "dilate", "--name", "Synth2DMulti_mixture"],
                       "--overwrite"),
                      (["-d", "2", "-o", "21", "--noise", "dilate"],
                       "already used by Dataset021_Synth2DMulti_mixture")]:
        assert cli.main(argv + ["--no_pbar"]) == 2
        assert msg in capsys.readouterr().err


def test_parse_values():
    assert cli.parse_value("3") == 3 and cli.parse_value("0.5") == 0.5
    assert cli.parse_value("3,9") == [3, 9] and cli.parse_value("true") is True
    assert cli.parse_value("dilate,erode") == ["dilate", "erode"]
    assert cli.parse_params(["radius=3,9", "markov.T=100"]) == {"radius": [3, 9], "markov": {"T": 100}}
    params, per_class = cli.split_class_params(cli.parse_params(["T=5", "class3.T=100"]))
    assert params == {"T": 5} and per_class == {3: {"T": 100}}
    assert cli.build_params("alpha_beta", ["types=dilate"], None, 0.7) == {"types": ["dilate"], "beta": 0.7}
    assert cli.build_params("mixture", None, ["dilate=1", "box=1"], 0.5) == \
        {"mixture": {"dilate": 1.0, "box": 1.0}, "dilate": {"beta": 0.5}}


def test_converters_on_real_data(shared_data, nnunet_env):
    jsrt = load_benchmark("convert_jsrt")
    assert jsrt.main(["-d", "31", "--structures", "all", "--size", "32", "--num_cases", "4", "--num_test", "1",
                      "--data", str(shared_data)]) == 0
    folder = Path(nnunet_env["nnUNet_raw"]) / "Dataset031_JSRTLungHeartClavicle32"
    segs = labels_of(folder)
    assert len(segs) == 3 and all(s.shape == (1, 32, 32) for s in segs.values())
    assert set(np.unique(np.concatenate([s.ravel() for s in segs.values()]))) == {0, 1, 2, 3}
    assert jsrt.main(["-d", "31", "--structures", "all", "--size", "32", "--data", str(shared_data)]) == 1
    hip = load_benchmark("convert_hippocampus")
    assert hip.main(["-d", "32", "--num_cases", "2", "--data", str(shared_data)]) == 0
    out = corrupt_dataset(32, 33, "erode", {"radius": 1}, pbar=False)
    assert set(manifest_of(out)["summary"]["mean_dice_corrupted_per_class"]) == {"1", "2"}
