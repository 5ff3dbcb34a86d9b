"""The benchmark helpers that do not train: the results plot, the label-quality table."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

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
                                   "arms": {"nnunet_noisy": (0.83, 0.01), "nnunet_revised": (0.93, 0.01)},
                                   "revisions": {"revised, method nin": 0.95}}
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


def _runner(bench, tmp_path, **overrides):
    """A benchmark ``Runner`` on ``tmp_path`` with the CPU defaults of the command line; ``overrides`` change them."""
    import argparse

    args = dict(work=str(tmp_path), mode="cpu", epochs=None, iterations=None, revision_epochs=None, device="cpu",
                np=2, base_id=700, disable_tta=False, configuration="2d", nin_trainer=None, realign=False,
                cpu_plans=False)
    return bench.Runner(argparse.Namespace(**{**args, **overrides}))


def test_ensemble_revision_reuses_the_two_phase1_models(tmp_path):
    """The runner's ensemble revision trains nothing: it revises after the two single-method revisions, with their
    models (``--model``, ``--clean_only_model``: the folder a manifest records, else the one its auxiliary dataset
    implies), so its phase-1 cost is theirs."""
    runner = _runner(load_benchmark("run_benchmark"), tmp_path)
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
    runner = _runner(load_benchmark("run_benchmark"), tmp_path,
                     nin_trainer="NoiseIdentificationTrainer_labelShift_budget", realign=True)
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


@pytest.mark.parametrize("source, size, steps", [("jsrt-lung", 64, "T=45"), ("jsrt-lung", None, "T=180"),
                                                 ("hippocampus", None, "T=20")])
def test_markov_steps_follow_the_structure_size(tmp_path, source, size, steps):
    """The Markov protocol's T=180 is the JSRT setting at 256 px: the runner scales it with ``--size`` and uses 20 on
    the hippocampus, whose structures 180 boundary steps would wipe out; ``--corrupt_extra`` still comes last."""
    runner = _runner(load_benchmark("run_benchmark"), tmp_path, source=source, size=size, protocol="markov",
                     corrupt_extra=["--param", "theta1=0.2"], clean_fraction=0.1, seed=0)
    (tmp_path / "nnUNet_raw" / "Dataset700_X").mkdir(parents=True)
    calls = []
    runner.sh = lambda cmd, step: calls.append(cmd)
    runner.corrupt()
    (cmd,) = calls
    assert [c for c in cmd if c.startswith("T=")] == [steps]
    assert cmd[cmd.index("--param", cmd.index("--param") + 1) + 1] == "theta1=0.2"


def _scores(case_dice: dict[str, float], train_s: float = 10.0) -> dict:
    return {"summary": {"dice_mean": float(np.mean(list(case_dice.values()))), "hd95_median": 2.0,
                        "dice_1": float(np.mean(list(case_dice.values())))},
            "per_case": {c: {"1": {"dice": d, "hd95": 2.0}} for c, d in case_dice.items()}, "train_s": train_s}


def test_tables_pair_arms_per_case_across_seeds(tmp_path):
    """An arm 0.05 better than the clean-pairs bar on every case, with seed noise, gets a CI around +0.05 that
    excludes 0; an arm equal to the imperfect bar up to symmetric noise gets one that includes 0."""
    bench = load_benchmark("run_benchmark")
    rng = np.random.default_rng(0)
    cases = [f"c{i}.png" for i in range(30)]
    base = {c: 0.8 + 0.1 * rng.random() for c in cases}
    per_seed = []
    for seed in range(3):
        noise, noise2 = ({c: 0.01 * rng.standard_normal() for c in cases} for _ in range(2))
        per_seed.append({
            "nnunet_clean_subset": _scores({c: base[c] + noise[c] for c in cases}),
            "nnunet_noisy": _scores({c: base[c] - 0.02 for c in cases}),
            "nnunet_revised": _scores({c: base[c] + 0.05 + noise2[c] for c in cases}),
            "robust_revised": _scores({c: base[c] - 0.02 + (0.01 if i % 2 else -0.01) for i, c in enumerate(cases)}),
        })
    rows = {r["arm"]: r for r in bench.arm_rows(list(per_seed[0]), per_seed)}
    rev = rows["nnunet_revised"]
    assert rev["runs"] == 3
    assert rev["vs_clean_pairs"] == pytest.approx(0.05, abs=0.01)
    assert 0.0 < rev["vs_clean_pairs_ci_low"] < 0.05 < rev["vs_clean_pairs_ci_high"]
    rob = rows["robust_revised"]
    assert rob["vs_imperfect_ci_low"] < 0 < rob["vs_imperfect_ci_high"]
    assert np.isnan(rows["nnunet_clean_subset"]["vs_clean_pairs"])  # a bar is not compared with itself
    assert rev["dice_ci_low"] < rev["dice_mean"] < rev["dice_ci_high"]

    args = bench.argparse.Namespace(arms=list(per_seed[0]), seeds=[0, 1, 2], source="x", size=None, protocol="p",
                                    clean_fraction=0.1, seed=0, num_test=30, configuration="2d", device="cpu")
    runner = type("R", (), {"args": args, "work": tmp_path, "budget": {"epochs": 1, "iterations": 1,
                                                                        "revision_epochs": 1},
                            "say": lambda self, m: None})()
    quality = [[["imperfect (as given)", 0.8, 0.1, 27], ["revised, method nin", 0.9 + s / 100, 0.1, 27]]
               for s in range(3)]
    bench.write_tables(runner, per_seed, quality)
    md = (tmp_path / "results.md").read_text()
    assert "| nnunet_revised |" in md and f"{rev['vs_clean_pairs']:+.3f} [" in md and "]*" in md
    assert len((tmp_path / "per_case.csv").read_text().splitlines()) == 1 + 3 * 4 * 30
    q = list(csv.DictReader(open(tmp_path / "label_quality.csv")))
    assert q[1]["labels"] == "revised, method nin" and float(q[1]["dice_vs_clean_mean"]) == pytest.approx(0.91)
    plot = load_benchmark("plot_results")
    arms = plot.read_folder(tmp_path)["arms"]
    mean, (below, above) = arms["nnunet_revised"]
    assert below > 0 and above > 0 and mean == pytest.approx(rev["dice_mean"])


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh --dry-run times both trainers side by side on the CPU and writes the report."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    out = tmp_path / "gpu_check"
    env = {**os.environ, "PYTHON": sys.executable, "nnUNet_compile": "0", "STEP_TIMEOUT": "300",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "gpu_check.md").read_text()
    assert "## 2d_dry_run" in report and "Please cite" not in report
    rows = [line for line in report.splitlines() if line.startswith(("| nnUNetTrainer |", "| NoiseRobustTrainer |"))]
    assert len(rows) == 2 and rows[0].split("|")[3].strip() == "1.00"
    result = json.loads((out / "2d_dry_run.json").read_text())
    assert [r["trainer"] for r in result["results"]] == ["nnUNetTrainer", "NoiseRobustTrainer"]
    assert all(r["train_s_per_iter"] > 0 for r in result["results"])
    assert result["results"][1]["params"] > 1.5 * result["results"][0]["params"]  # two networks


def test_plot_against_the_number_of_clean_pairs(tmp_path):
    plot = load_benchmark("plot_results")
    folders = []
    for n, d in ((5, 0.90), (20, 0.93)):
        w = _write_work(tmp_path / f"clean{n}", 0.84, {"nnunet_clean_subset": d - 0.02, "nnunet_revised": d})
        (w / "nnUNet_raw" / "Dataset701_X").mkdir(parents=True)
        (w / "nnUNet_raw" / "Dataset701_X" / "corruption_manifest.json").write_text(
            json.dumps({"summary": {"num_clean_subset": n}}))
        folders.append(w)
    assert plot.read_folder(folders[0])["clean_pairs"] == 5
    out = tmp_path / "clean_pairs.png"
    assert plot.main([str(f) for f in folders] + ["--x", "clean_pairs", "-o", str(out), "--arms",
                                                  "nnunet_revised"]) == 0 and out.is_file()
    # two panels: the label Dice per revision method, the test Dice of the chosen arm only
    import matplotlib.pyplot as plt

    drawn = []
    real = plt.Axes.errorbar
    try:
        plt.Axes.errorbar = lambda self, *a, **k: drawn.append(k["label"]) or real(self, *a, **k)
        plot.plot([plot.read_folder(f) for f in folders], tmp_path / "again.png", "t", "clean_pairs",
                  ["nnunet_revised"])
    finally:
        plt.Axes.errorbar = real
    assert drawn == ["nnU-Net, revised labels (phase 1)"]
    with pytest.raises(SystemExit, match="corruption_manifest"):
        plot.main([str(_write_work(tmp_path / "old", 0.8, {"nnunet_revised": 0.9})), "--x", "clean_pairs",
                   "-o", str(tmp_path / "x.png")])


def test_draws_repeat_the_benchmark_in_subfolders_and_pool_the_tables(tmp_path, monkeypatch):
    """``--draws 0 1`` with ``--seed 0``: draw 0 runs in the work folder, draw 1 in ``draw1/`` with the corruption
    seed 1, both with every training seed; the tables in the work folder hold every (draw, seed) run."""
    bench = load_benchmark("run_benchmark")
    cases = [f"c{i}.png" for i in range(10)]
    seen = []

    def fake_prepare(self):
        seen.append(("prepare", self.args.seed, Path(self.args.work)))

    def fake_run(self):
        seen.append(("run", self.args.seed, self.seed, self.work))
        bonus = 0.01 * self.args.seed + 0.001 * self.seed  # tells the runs apart in per_case.csv
        scores = {"nnunet_clean_subset": _scores({c: 0.8 + bonus for c in cases}),
                  "nnunet_noisy": _scores({c: 0.7 + bonus for c in cases}),
                  "nnunet_revised": _scores({c: 0.85 + bonus for c in cases})}
        return scores, [["imperfect (as given)", 0.8, 0.1, 9]]

    monkeypatch.setattr(bench.Runner, "prepare", fake_prepare)
    monkeypatch.setattr(bench.Runner, "run", fake_run)
    bench.main(["--source", "jsrt-lung", "--protocol", "markov", "--seed", "0", "--draws", "0", "1", "--seeds", "0",
                "2", "--arms", "nnunet_clean_subset", "nnunet_noisy", "nnunet_revised", "--work", str(tmp_path)])
    work = tmp_path.resolve()
    assert [s for s in seen if s[0] == "prepare"] == [("prepare", 0, work), ("prepare", 1, work / "draw1")]
    assert [s[1:] for s in seen if s[0] == "run"] == [(0, 0, work), (0, 2, work), (1, 0, work / "draw1"),
                                                      (1, 2, work / "draw1")]
    rows = list(csv.DictReader(open(work / "per_case.csv")))
    assert len(rows) == 4 * 3 * len(cases)
    assert {(r["draw"], r["seed"]) for r in rows} == {("0", "0"), ("0", "2"), ("1", "0"), ("1", "2")}
    revised = {(r["draw"], r["seed"]): float(r["dice"]) for r in rows if r["arm"] == "nnunet_revised"}
    assert revised[("1", "2")] == pytest.approx(0.85 + 0.012)
    result = {r["arm"]: r for r in csv.DictReader(open(work / "results.csv"))}
    assert result["nnunet_revised"]["runs"] == "4"
    assert float(result["nnunet_revised"]["vs_clean_pairs"]) == pytest.approx(0.05)
    assert "draws [0, 1]" in (work / "results.md").read_text()
    assert not (work / "draw0").exists()
    with pytest.raises(SystemExit):
        bench.main(["--source", "jsrt-lung", "--protocol", "markov", "--draws", "1", "1", "--work", str(tmp_path)])


def test_arms_of_an_earlier_call_stay_in_the_tables(tmp_path, monkeypatch):
    """A second call with other ``--arms`` keeps the arms an earlier call finished in every run (their scores.json),
    and leaves out an arm finished in only some runs."""
    bench = load_benchmark("run_benchmark")
    cases = [f"c{i}.png" for i in range(10)]
    work = tmp_path.resolve()

    def fake_train(self, arm):
        return _scores({c: {"nnunet_clean_subset": 0.8, "nnunet_revised": 0.9}[arm] for c in cases})

    monkeypatch.setattr(bench.Runner, "prepare", lambda self: None)
    monkeypatch.setattr(bench.Runner, "revise", lambda self, method, band=False: None)
    monkeypatch.setattr(bench.Runner, "train_and_score", fake_train)
    for sub, arm, dice in (("", "nnunet_noisy", 0.7), ("seed1", "nnunet_noisy", 0.7), ("", "robust_revised", 0.95)):
        folder = work / "predictions" / sub / arm
        folder.mkdir(parents=True)
        (folder / "scores.json").write_text(json.dumps(_scores({c: dice for c in cases})))
    bench.main(["--source", "jsrt-lung", "--protocol", "markov", "--seeds", "0", "1", "--no_label_quality",
                "--arms", "nnunet_clean_subset", "nnunet_revised", "--work", str(work)])
    result = {r["arm"]: r for r in csv.DictReader(open(work / "results.csv"))}
    assert list(result) == ["nnunet_clean_subset", "nnunet_revised", "nnunet_noisy"]
    assert float(result["nnunet_noisy"]["vs_clean_pairs"]) == pytest.approx(-0.1)
    assert float(result["nnunet_revised"]["vs_imperfect"]) == pytest.approx(0.2)
    rows = list(csv.DictReader(open(work / "per_case.csv")))
    assert {r["arm"] for r in rows} == {"nnunet_clean_subset", "nnunet_revised", "nnunet_noisy"}
    assert len(rows) == 3 * 2 * len(cases)


def test_bench_stats_pairs_two_arms_across_folders(tmp_path, capsys):
    """The command line pairs an arm with a bar of another folder per test case, over each one's runs; an arm the
    file does not hold is a clear error."""
    stats = load_benchmark("bench_stats")
    rng = np.random.default_rng(1)
    cases = [f"c{i}.png" for i in range(20)]
    base = {c: 0.8 + 0.1 * rng.random() for c in cases}
    for name, arm, shift in (("a", "robust_revised", 0.02), ("b", "nnunet_clean_subset", 0.0)):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "per_case.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["arm", "draw", "seed", "case", "dice"])
            for seed in range(3):
                w.writerows([arm, 0, seed, c, base[c] + shift + 0.005 * rng.standard_normal()] for c in cases)
    assert stats.main([str(tmp_path / "a"), "--arm", "robust_revised", "--bar", "nnunet_clean_subset",
                       "--bar_work", str(tmp_path / "b" / "per_case.csv")]) == 0
    out = capsys.readouterr().out
    assert "(3 runs)" in out and "20 test cases" in out
    mean, low, high = map(float, re.search(r"\(mean (\S+) \[(\S+), (\S+)\]", out).groups())
    assert mean == pytest.approx(0.02, abs=0.005) and 0 < low < mean < high
    with pytest.raises(SystemExit, match="no rows of arm 'nnunet_revised'"):
        stats.main([str(tmp_path / "a"), "--arm", "robust_revised", "--bar", "nnunet_revised"])


def test_bench_stats_pairs_runs_given_as_scores_files(tmp_path, capsys):
    """Runs scored outside a work folder (one scores.json each) are paired per case over the structures' mean Dice;
    a file that is not a scores file is a clear error."""
    stats = load_benchmark("bench_stats")
    cases = [f"c{i}.nii.gz" for i in range(12)]
    files = {"arm": [], "bar": []}
    for seed in range(3):
        for name, shift in (("arm", -0.01), ("bar", 0.0)):
            per_case = {c: {"1": {"dice": 0.8 + 0.01 * i + shift, "hd95": 1.0},
                            "2": {"dice": 0.6 + 0.01 * i + shift + 0.002 * seed, "hd95": 1.0}}
                        for i, c in enumerate(cases)}
            f = tmp_path / f"{name}{seed}.json"
            f.write_text(json.dumps({"summary": {}, "per_case": per_case}))
            files[name].append(str(f))
    assert stats.main(["--arm_scores", *files["arm"], "--bar_scores", *files["bar"]]) == 0
    out = capsys.readouterr().out
    assert "arm (3 runs) - bar (3 runs)" in out and "12 test cases" in out and "-0.010 [-0.010, -0.010]*" in out
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="bad.json is not a readable scores file"):
        stats.main(["--arm_scores", str(tmp_path / "bad.json"), "--bar_scores", *files["bar"]])


def test_revision_breakdown_groups_cases_by_noise_kind_and_structure(tmp_path, capsys):
    """Untouched cases and each noise kind get their own rows; the clean pairs and cases a report lacks are left
    out; the means are those of the cases of the group."""
    breakdown = load_benchmark("revision_breakdown")
    raw = tmp_path / "nnUNet_raw"
    noisy = raw / "Dataset701_X_ab"
    noisy.mkdir(parents=True)
    kinds = {"a": "dilate", "b": "dilate", "c": "erode", "d": None, "e": None}
    cases = {c: {"noise": k, "clean_subset": False, "corrupted": k is not None} for c, k in kinds.items()}
    cases["p"] = {"noise": None, "clean_subset": True, "corrupted": False}
    (noisy / "corruption_manifest.json").write_text(json.dumps({"cases": cases}))

    def rec(imp, rev):
        return {"source": "revised", "dice_imperfect": np.mean(imp), "dice_revised": np.mean(rev),
                "dice_imperfect_per_class": {"1": imp[0], "2": imp[1]},
                "dice_revised_per_class": {"1": rev[0], "2": rev[1]}}

    report = {"cases": {"a": rec([0.6, 0.8], [0.9, 0.9]), "b": rec([0.7, 0.8], [0.8, 0.9]),
                        "c": rec([0.5, 0.5], [0.7, 0.9]), "d": rec([1.0, 1.0], [0.9, 0.95]),
                        "e": rec([1.0, 1.0], [0.95, 0.95]), "p": rec([1.0, 1.0], [1.0, 1.0])}}
    folder = raw / "Dataset703_X_ab_revised" / "labelsTr_revision_report"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))
    assert breakdown.main([str(tmp_path)]) == 0
    rows = {(r["kind"], r["structure"]): r for r in breakdown.breakdown(
        breakdown.noise_kinds(json.loads((noisy / "corruption_manifest.json").read_text())), {"rev": report})}
    assert [k for k, s in rows if s == "mean"] == ["untouched", "dilate", "erode"]  # untouched first
    assert rows[("untouched", "1")]["cases"] == 2 and rows[("untouched", "1")]["rev"] == pytest.approx(0.925)
    dilate = rows[("dilate", "1")]
    assert dilate["imperfect"] == pytest.approx(0.65) and dilate["rev"] == pytest.approx(0.85)
    assert rows[("erode", "2")]["rev"] == pytest.approx(0.9)
    md = (tmp_path / "revision_breakdown.md").read_text()
    assert md == capsys.readouterr().out and "| untouched | 1 | 2 | 1.0000 | 0.9250 |" in md
    with pytest.raises(SystemExit, match="corruption_manifest"):
        breakdown.main([str(tmp_path / "nowhere")])
