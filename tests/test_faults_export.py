"""``nnUNetv2_nl_export`` against hostile output paths: it must refuse, explain, exit 2 and touch nothing.

The model folder is faked (a twin-format checkpoint of a 1x1 convolution, no training), so these tests are fast.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from conftest import tree_state
from nnunet_noisylabels.cli.export import main as export_main
from nnunet_noisylabels.robust import export as export_lib

MODEL = "NoiseRobustTrainer__nnUNetPlans__2d"


def _fake_model_folder(folder: Path, folds=("0", "1"), members: int = 2) -> Path:
    """A NoiseRobustTrainer model folder as nnU-Net leaves it: plans, dataset.json, twin checkpoints per fold."""
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps({"dataset_name": "Dataset001_Toy", "plans_name": "nnUNetPlans"}))
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "fg": 1}, "file_ending": ".png"}))
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        weights = {}
        for m in range(members):
            conv = torch.nn.Conv2d(1, 2, 1)
            torch.nn.init.constant_(conv.weight, float(m + 1))
            weights.update({f"members.{m}.{k}": v for k, v in conv.state_dict().items()})
        torch.save({"network_weights": weights, "trainer_name": "NoiseRobustTrainer", "current_epoch": 5,
                    "init_args": {"plans": {}, "configuration": "2d", "fold": int(fold), "dataset_json": {}},
                    "inference_allowed_mirroring_axes": (0, 1)},
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


@pytest.fixture
def layout(tmp_path) -> dict[str, Path]:
    """RESULTS/Dataset001_Toy/<model> with a sibling model folder, a foreign folder, a file and a symlink."""
    results = tmp_path / "RESULTS"
    dataset = results / "Dataset001_Toy"
    model = _fake_model_folder(dataset / MODEL)
    sibling = dataset / "nnUNetTrainer__nnUNetPlans__2d"
    (sibling / "fold_0").mkdir(parents=True)
    (sibling / "fold_0" / "checkpoint_final.pth").write_bytes(b"someone else's model")
    foreign = tmp_path / "my_documents"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("do not delete")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file")
    (tmp_path / "link_to_folder").symlink_to(foreign, target_is_directory=True)
    (tmp_path / "link_to_model").symlink_to(model, target_is_directory=True)
    (tmp_path / "dangling_link").symlink_to(tmp_path / "nowhere")
    (tmp_path / "link_to_dataset").symlink_to(dataset, target_is_directory=True)
    return {"root": tmp_path, "results": results, "dataset": dataset, "model": model, "foreign": foreign,
            "file": a_file}


def _call(argv: list[str]) -> int:
    try:
        return export_main(argv)
    except SystemExit as e:  # argparse errors
        return e.code


# (case id, argv builder, expected message fragment)
FAULTS = [
    ("output_is_model", lambda L: ["-m", L["model"], "-o", L["model"], "--overwrite"], "is the model folder"),
    ("output_is_results_root", lambda L: ["-m", L["model"], "-o", L["results"], "--overwrite"],
     "contains the model folder"),
    ("output_is_dataset_folder", lambda L: ["-m", L["model"], "-o", L["dataset"], "--overwrite"],
     "contains the model folder"),
    ("output_inside_model", lambda L: ["-m", L["model"], "-o", L["model"] / "exported", "--overwrite"],
     "lies inside the model folder"),
    ("output_inside_fold", lambda L: ["-m", L["model"], "-o", L["model"] / "fold_0", "--overwrite"],
     "lies inside the model folder"),
    ("output_inside_model_via_link",
     lambda L: ["-m", L["model"], "-o", L["root"] / "link_to_dataset" / MODEL / "new", "--overwrite"],
     "lies inside the model folder"),
    ("model_given_via_link_output_is_model",
     lambda L: ["-m", L["root"] / "link_to_model", "-o", L["model"], "--overwrite"], "is the model folder"),
    ("foreign_folder_overwrite", lambda L: ["-m", L["model"], "-o", L["foreign"], "--overwrite"],
     "not a previous export"),
    ("foreign_folder", lambda L: ["-m", L["model"], "-o", L["foreign"]], "exists"),
    ("existing_file_overwrite", lambda L: ["-m", L["model"], "-o", L["file"], "--overwrite"], "is not a folder"),
    ("existing_file", lambda L: ["-m", L["model"], "-o", L["file"]], "is not a folder"),
    ("parent_is_file", lambda L: ["-m", L["model"], "-o", L["file"] / "export"], "is not a folder"),
    ("symlink_to_folder", lambda L: ["-m", L["model"], "-o", L["root"] / "link_to_folder", "--overwrite"],
     "symbolic link"),
    ("symlink_to_model", lambda L: ["-m", L["model"], "-o", L["root"] / "link_to_model", "--overwrite"],
     "symbolic link"),
    ("dangling_symlink", lambda L: ["-m", L["model"], "-o", L["root"] / "dangling_link"], "symbolic link"),
    ("missing_model_folder", lambda L: ["-m", L["root"] / "no_such_model", "-o", L["root"] / "out"], "plans.json"),
    ("model_folder_not_given", lambda L: ["-o", L["root"] / "out"], "-m"),
    ("member_out_of_range", lambda L: ["-m", L["model"], "-o", L["root"] / "out", "--member", "5"], "member 5"),
    ("member_out_of_range_new_parents",
     lambda L: ["-m", L["model"], "-o", L["root"] / "new" / "deeper" / "out", "--member", "2"], "member 2"),
    ("missing_fold", lambda L: ["-m", L["model"], "-o", L["root"] / "out", "-f", "3"], "fold_3"),
]


@pytest.mark.parametrize("argv, fragment", [pytest.param(a, f, id=i) for i, a, f in FAULTS])
def test_export_refuses_bad_input_and_changes_nothing(layout, capsys, argv, fragment):
    before = tree_state(layout["root"])
    code = _call([str(x) for x in argv(layout)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err
    assert "Traceback" not in err
    assert tree_state(layout["root"]) == before


def test_export_writes_with_the_umask_mode(layout):
    out = layout["root"] / "exports" / "twin_export"
    old = os.umask(0o022)
    try:
        assert export_main(["-m", str(layout["model"]), "-o", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o755
    folders = [p for p in out.rglob("*") if p.is_dir()]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in folders) == ["fold_0", "fold_1", "fold_2", "fold_3"]
    assert {"plans.json", "dataset.json", "export.json", "checkpoint_final.pth"} == {p.name for p in files}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o755 for p in folders)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files), \
        {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == "nnunet_noisylabels.export/1"
    assert [(f["source_fold"], f["member"]) for f in info["folds"]] == [("0", 0), ("0", 1), ("1", 0), ("1", 1)]
    member1 = torch.load(out / "fold_1" / "checkpoint_final.pth", weights_only=False)
    assert member1["trainer_name"] == "nnUNetTrainer" and float(member1["network_weights"]["weight"].mean()) == 2.0


@pytest.mark.parametrize("old_format", [False, True])
def test_overwrite_replaces_a_previous_export_only(layout, old_format):
    out = layout["root"] / "export"
    assert export_main(["-m", str(layout["model"]), "-o", str(out)]) == 0
    if old_format:  # an export.json written before the format marker existed
        info = json.loads((out / "export.json").read_text())
        del info["format"]
        (out / "export.json").write_text(json.dumps(info))
    (out / "stale.txt").write_text("from the previous export")
    others = tree_state(layout["results"], layout["foreign"])
    assert export_main(["-m", str(layout["model"]), "-o", str(out), "--member", "1", "--overwrite"]) == 0
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in out.glob("fold_*")) == ["fold_0", "fold_1"]
    assert json.loads((out / "export.json").read_text())["member"] == 1
    assert tree_state(layout["results"], layout["foreign"]) == others
    assert not [p for p in layout["root"].iterdir() if p.name.startswith(".export.")]  # no temporary/aside folder


def test_failed_replace_keeps_the_previous_export(layout, monkeypatch):
    out = layout["root"] / "export"
    assert export_main(["-m", str(layout["model"]), "-o", str(out)]) == 0
    before = tree_state(layout["root"])
    real_rename = os.rename
    calls = []

    def failing_rename(a, b):
        calls.append((Path(a).name, Path(b).name))
        if len(calls) == 2:  # the move of the new export into place
            raise OSError("simulated crash")
        return real_rename(a, b)

    monkeypatch.setattr(export_lib.os, "rename", failing_rename)
    assert export_main(["-m", str(layout["model"]), "-o", str(out), "--overwrite"]) == 1
    monkeypatch.undo()
    assert calls[0][0] == "export" and calls[0][1].startswith(".export.old-")  # old export renamed aside first
    assert tree_state(layout["root"]) == before  # old export back in place, temporary folders gone
