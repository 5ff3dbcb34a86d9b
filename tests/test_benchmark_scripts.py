"""The benchmark helpers that do not train: the results plot, the label-quality table."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import load_benchmark


def _write_work(folder, imperfect, arms, protocol=None):
    folder.mkdir()
    with open(folder / "label_quality.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["labels", "dice_vs_clean_mean", "dice_vs_clean_std", "cases"])
        w.writerow(["imperfect (as given)", imperfect, 0.02, 10])
        w.writerow(["revised, method nin", 0.95, 0.01, 10])
    with open(folder / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "labels", "trainer", "dice_mean", "dice_sd"])
        for arm, d in arms.items():
            w.writerow([arm, "x", "t", d, 0.01])
    if protocol:
        (folder / "settings.json").write_text(f'{{"protocol": "{protocol}"}}')
    return folder


def test_plot_reads_folders_and_writes_png(tmp_path):
    plot = load_benchmark("plot_results")
    a = _write_work(tmp_path / "a", 0.84, {"nnunet_noisy": 0.83, "nnunet_revised": 0.93}, protocol="markov")
    b = _write_work(tmp_path / "b", 0.74, {"nnunet_noisy": 0.75, "nnunet_revised": 0.9, "my_arm": 0.8})
    assert plot.read_folder(a) == {"protocol": "markov", "imperfect_dice": 0.84,
                                   "arms": {"nnunet_noisy": (0.83, 0.01), "nnunet_revised": (0.93, 0.01)}}
    assert plot.read_folder(b)["protocol"] == "b"  # no settings.json: the folder's name
    out = tmp_path / "plots" / "dice.png"
    assert plot.main([str(a), str(b), "-o", str(out)]) == 0
    from PIL import Image

    img = np.asarray(Image.open(out).convert("L"))
    assert img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 10  # a drawn figure, not a blank canvas


def test_plot_refuses_unfinished_folder(tmp_path):
    plot = load_benchmark("plot_results")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="run_benchmark.py"):
        plot.main([str(tmp_path / "empty"), "-o", str(tmp_path / "x.png")])


def test_label_quality_reads_only_the_benchmark_revisions(tmp_path):
    bench = load_benchmark("run_benchmark")

    def report(name, method, revised):
        folder = tmp_path / "nnUNet_raw" / name / "labelsTr_revision_report"
        folder.mkdir(parents=True)
        cases = {f"c{i}": {"source": "revised", "dice_imperfect": 0.8, "dice_revised": d}
                 for i, d in enumerate(revised)}
        cases["k"] = {"source": "clean", "dice_imperfect": 1.0, "dice_revised": 1.0}  # clean pairs are left out
        (folder / "report.json").write_text(json.dumps({"method": method, "cases": cases}))

    report("Dataset703_X_revised", "nin", [0.9, 0.96])
    report("Dataset704_X_cleanonly", "clean_only", [0.94, 0.94])
    report("Dataset710_X_myvariant", "nin", [0.5, 0.5])  # a user's own revision in the same work folder
    rows = bench.label_quality(tmp_path, [703, 704])
    assert [r[0] for r in rows] == ["imperfect (as given)", "revised, method nin", "revised, method clean_only"]
    assert rows[0][1:] == [pytest.approx(0.8), pytest.approx(0.0), 2]
    assert rows[1][1:] == [pytest.approx(0.93), pytest.approx(0.03), 2]
    assert rows[2][1] == pytest.approx(0.94)


def test_every_arm_trains_on_a_benchmark_dataset():
    bench = load_benchmark("run_benchmark")
    for arm, (labels, trainer) in bench.ARMS.items():
        assert bench.LABEL_DATASETS[labels] in bench.DATASET_KEYS, arm
    # the two revisions are compared downstream by arms that train on each
    assert bench.LABEL_DATASETS[bench.ARMS["nnunet_revised"][0]] == "revised"
    assert bench.LABEL_DATASETS[bench.ARMS["nnunet_cleanonly_revised"][0]] == "clean_only_revised"


def test_interrupted_preprocessing_is_redone(tmp_path):
    bench = load_benchmark("run_benchmark")
    raw = tmp_path / "Dataset702_X"
    raw.mkdir()
    (raw / "dataset.json").write_text(json.dumps({"numTraining": 3}))
    pre = tmp_path / "nnUNetPlans_2d"
    assert not bench.preprocessing_finished(pre, raw)
    pre.mkdir()
    for case in ("a", "b", "c"):
        (pre / f"{case}.b2nd").write_bytes(b"x")
    (pre / "a.pkl").write_bytes(b"x")
    (pre / "b.pkl").write_bytes(b"x")
    assert not bench.preprocessing_finished(pre, raw)  # killed before the last case's properties were written
    (pre / "c.pkl").write_bytes(b"x")
    assert bench.preprocessing_finished(pre, raw)


def test_ensemble_revision_reuses_the_two_phase1_models(tmp_path):
    """The runner's ensemble revision trains nothing: it revises after the two single-method revisions, with their
    models (``--model``, ``--clean_only_model``: the folder a manifest records, else the one its auxiliary dataset
    implies), so its phase-1 cost is theirs."""
    import argparse

    bench = load_benchmark("run_benchmark")
    args = argparse.Namespace(work=str(tmp_path), mode="cpu", epochs=None, iterations=None, revision_epochs=None,
                              device="cpu", np=2, base_id=700, disable_tta=False, configuration="2d",
                              nin_trainer=None, realign=False)
    runner = bench.Runner(args)
    raw = tmp_path / "nnUNet_raw"
    (raw / "Dataset701_X_markov").mkdir()
    calls = []
    used_nin = tmp_path / "elsewhere" / "NoiseIdentificationTrainer_budget__nnUNetPlans__2d"
    used_nin.mkdir(parents=True)

    def fake_sh(cmd, step):  # what nnUNetv2_nl_revise leaves behind: the dataset and its manifest
        calls.append((step, cmd))
        out = raw / cmd[cmd.index("-o") + 1]
        out.mkdir()
        method = cmd[cmd.index("--method") + 1]
        aux = {"nin": "Dataset500_X_markovNIN", "clean_only": "Dataset501_X_markovNLclean"}.get(method)
        model = {"model_folder": str(used_nin)} if method == "nin" else {}  # recorded by the revision
        (out / "labelsTr_revision.json").write_text(json.dumps({"aux_dataset": aux, "model": model}))

    runner.sh = fake_sh
    runner.revise("ensemble")
    assert [s for s, _ in calls] == ["revise_nin", "revise_clean_only", "revise_ensemble"]
    cmd = calls[-1][1]
    results = tmp_path / "nnUNet_results"
    assert cmd[cmd.index("--model") + 1] == str(used_nin)  # the model the revision recorded
    assert cmd[cmd.index("--clean_only_model") + 1] == str(
        results / "Dataset501_X_markovNLclean" / "nnUNetTrainer_budget__nnUNetPlans__2d")
    assert cmd[cmd.index("-o") + 1] == "Dataset705_X_markov_ensemble"
    runner.revise("ensemble")  # done: nothing runs again
    assert len(calls) == 3
    assert all("--realign" not in c for _, c in calls)


def test_runner_passes_the_network_variant_and_realign(tmp_path):
    """``--nin_trainer`` and ``--realign`` reach the network's and the ensemble's revision (and the ensemble looks for
    the network's model under that trainer), not the clean-only one."""
    import argparse

    bench = load_benchmark("run_benchmark")
    args = argparse.Namespace(work=str(tmp_path), mode="cpu", epochs=None, iterations=None, revision_epochs=None,
                              device="cpu", np=2, base_id=700, disable_tta=False, configuration="2d",
                              nin_trainer="NoiseIdentificationTrainer_labelShift_budget", realign=True)
    runner = bench.Runner(args)
    raw = tmp_path / "nnUNet_raw"
    (raw / "Dataset701_X_ab").mkdir()
    calls = {}

    def fake_sh(cmd, step):
        calls[step] = cmd
        (raw / cmd[cmd.index("-o") + 1]).mkdir()
        method = cmd[cmd.index("--method") + 1]
        aux = {"nin": "Dataset500_X_abNIN", "clean_only": "Dataset501_X_abNLclean"}.get(method)
        (raw / cmd[cmd.index("-o") + 1] / "labelsTr_revision.json").write_text(json.dumps({"aux_dataset": aux}))

    runner.sh = fake_sh
    runner.revise("ensemble")
    nin, co, ens = calls["revise_nin"], calls["revise_clean_only"], calls["revise_ensemble"]
    assert nin[nin.index("-tr") + 1] == "NoiseIdentificationTrainer_labelShift_budget" and "--realign" in nin
    assert co[co.index("-tr") + 1] == "nnUNetTrainer_budget" and "--realign" not in co
    model = (tmp_path / "nnUNet_results" / "Dataset500_X_abNIN" /
             "NoiseIdentificationTrainer_labelShift_budget__nnUNetPlans__2d")
    assert "--realign" in ens and ens[ens.index("--model") + 1] == str(model)
