"""``nnUNetv2_nl_revise``: options reach the API, exit codes and messages."""
from __future__ import annotations

import json

import numpy as np
import pytest
from revision_support import ProbStep, TruthStep, fake_model_folder, read_array, top_half, tree_digest

from nnunet_noisylabels.cli.revise import main
from nnunet_noisylabels.revision import api as rv
from nnunet_noisylabels.revision import inputs as rv_inputs


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
    np.testing.assert_array_equal(read_array(ds / "labelsTr" / "toy_005.png"), read_array(truth / "toy_005.png"))
    monkeypatch.setattr(report, "write_revision_report", real)
    again = err.split("Write it again with: ")[1].split()
    assert again[:1] == ["nnUNetv2_nl_revise"] and "--report_only" in again
    assert main(again[1:] + ["--no_pbar"]) == 0
    assert (ds / "labelsTr_revision_report" / "report.json").is_file()


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


def test_cli_ensemble_passes_each_members_trainer_and_model(toy2d, monkeypatch):
    ds, truth = toy2d
    seen = []

    def fake_step(**kwargs):
        seen.append(kwargs)
        return ProbStep(truth, top_half if len(seen) == 1 else (lambda t: ~top_half(t)))

    monkeypatch.setattr(rv, "NnUNetModelStep", fake_step)
    models = {m: str(fake_model_folder(ds.parent.parent / "m" / m, rv_inputs.validate_inputs(ds), m))
              for m in ("nin", "clean_only")}
    argv = ["-d", ds.name, "--method", "ensemble", "-tr", "NoiseIdentificationTrainer_5epochs", "--model",
            models["nin"], "--clean_only_tr", "nnUNetTrainer_5epochs", "--clean_only_model", models["clean_only"],
            "-device", "cpu", "--no_pbar", "--no_report"]
    assert main(argv) == 0
    got = {(k["trainer"], k["model_folder"], k["save_probabilities"]) for k in seen}
    assert got == {("NoiseIdentificationTrainer_5epochs", models["nin"], True),
                   ("nnUNetTrainer_5epochs", models["clean_only"], True)}
    assert json.loads((ds / "labelsTr_revision.json").read_text())["method"] == "ensemble"


def test_cli_passes_realign_options(toy2d, monkeypatch):
    seen = {}
    monkeypatch.setattr(rv, "revise_dataset", lambda dataset, options: seen.update(vars(options)))
    assert main(["-d", str(toy2d[0]), "--realign", "--realign_min_gain", "0.1"]) == 0
    assert seen["realign"] is True and seen["realign_min_gain"] == 0.1 and seen["realign_rounds"] == 3
    assert main(["-d", str(toy2d[0]), "--realign", "--realign_rounds", "1"]) == 0 and seen["realign_rounds"] == 1
