"""Benchmark: every arm at the same training budget, on a held-out test split, written as CSV + Markdown.

From a clean nnU-Net raw dataset that has a held-out test split (imagesTs/labelsTs; the converters in this folder
write one), a noise protocol and a clean fraction, this script

1. corrupts the training labels with ``nnUNetv2_nl_corrupt`` (clean subset kept in ``labelsTr_clean/``);
2. builds the clean-subset dataset (only the clean pairs);
3. revises the labels with ``nnUNetv2_nl_revise`` (phase 1) and, for comparison, with its ``clean_only`` mode
   (nnU-Net trained on the clean pairs alone predicts the rest);
4. trains every arm with stock ``nnUNetv2_train`` at one budget (``nnUNet_nl_epochs`` / ``nnUNet_nl_iterations``
   read by the ``*_budget`` trainers), predicts the test split with ``nnUNetv2_predict`` and scores it
   (Dice and HD95 per structure, mean and spread over cases);
5. with ``--seeds 0 1 2`` repeats phase 1 and every arm with each training seed (``nnUNet_nl_seed``; the noise and
   the clean pairs stay those of ``--seed``); with ``--draws 0 1 2``, separately, repeats everything (corruption,
   clean pairs, phase 1, arms, with every seed) for each draw of the noise and of the clean pairs
   (``nnUNetv2_nl_corrupt --seed``): the draw equal to ``--seed`` in the work folder, the others in ``drawN/``
   sub-folders, every one a complete benchmark of its own; the test split (``--split_seed``) is the same for all;
6. writes ``results.csv``, ``results.md``, ``per_case.csv`` and ``label_quality.csv`` into the work folder: every
   arm's mean Dice over runs (draws x seeds) and cases, and its paired difference to the two bars (nnU-Net on the
   clean pairs alone, nnU-Net on the imperfect labels) per test case, averaged over the runs, with a bootstrap 95% CI
   (``bench_stats.py``). The tables hold this call's ``--arms`` and the arms an earlier call of the same work folder
   finished in every run (a work folder keeps one set of settings), so arms can be added call by call.

Every finished step leaves its output behind and is skipped on a re-run, so a killed run resumes where it stopped
(an interrupted training continues from its latest checkpoint).

Example (CPU mode, JSRT lung downsampled to 64x64, Markov noise, 10% clean):

    python benchmarks/run_benchmark.py --source jsrt-lung --size 64 --protocol markov --clean_fraction 0.1 \\
        --mode cpu --seeds 0 1 2 --work bench_output/jsrt_lung_markov
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

# noise protocols of the literature (see the README of the corruption toolkit for every parameter)
PROTOCOLS = {
    # Yao et al. ICLR 2023, JSRT setting: T=180, theta1=0.8 (growing), theta2=0.05, theta3=0.2
    "markov": ["--noise", "markov", "--param", "T=180", "theta1=0.8", "theta2=0.05", "theta3=0.2"],
    # Li et al. MICCAI 2021: alpha of the cases corrupted by dilation, erosion or affine until beta changed
    "alpha_beta": ["--noise", "alpha_beta", "--alpha", "0.7", "--beta", "0.5"],
    # weak labels: tight boxes around each connected component
    "box": ["--noise", "box"],
}

# arm -> (labels used for training, trainer). The confident-learning + SLSR arm first runs a 5-fold cross-validation
# of plain nnU-Net with --npz at the same budget and nnUNetv2_nl_find_issues on it (see Runner.find_issues).
ARMS = {
    "nnunet_noisy": ("noisy", "nnUNetTrainer_budget"),
    "nnunet_clean_subset": ("clean_subset", "nnUNetTrainer_budget"),
    "nnunet_revised": ("revised", "nnUNetTrainer_budget"),
    "robust_noisy": ("noisy", "NoiseRobustTrainer_budget"),
    "robust_revised": ("revised", "NoiseRobustTrainer_budget"),
    "robust_revised_noSoftening": ("revised", "NoiseRobustTrainer_noSoftening_budget"),
    "robust_revised_singleNet": ("revised", "NoiseRobustTrainer_singleNet_budget"),
    "gce_noisy": ("noisy", "nnUNetTrainerGCE_budget"),
    "nrdice_noisy": ("noisy", "nnUNetTrainerNRDice_budget"),
    "coteaching_noisy": ("noisy", "nnUNetTrainerCoTeaching_budget"),
    "clslr_noisy": ("noisy", "nnUNetTrainerCLSLR_budget"),
    "nnunet_clean_full": ("clean_full", "nnUNetTrainer_budget"),
    # nnU-Net on the clean-only revision (the baseline revision): compares the two revisions downstream
    "nnunet_cleanonly_revised": ("clean_only_revised", "nnUNetTrainer_budget"),
    # nnU-Net / NoiseRobustTrainer on the ensemble revision (both phase-1 models above, softmax averaged)
    "nnunet_ensemble_revised": ("ensemble_revised", "nnUNetTrainer_budget"),
    "robust_ensemble_revised": ("ensemble_revised", "NoiseRobustTrainer_budget"),
    # the network's revision with its uncertain band as nnU-Net's ignore label (--uncertain_band, same phase-1 model)
    "nnunet_revised_band": ("revised_band", "nnUNetTrainer_budget"),
    "robust_revised_band": ("revised_band", "NoiseRobustTrainer_budget"),
    "robust_revised_band_noPeer": ("revised_band", "NoiseRobustTrainer_noPeer_budget"),
}
# revision method of nnUNetv2_nl_revise -> (benchmark dataset key, dataset name suffix, phase-1 trainer)
REVISIONS = {"nin": ("revised", "revised", "NoiseIdentificationTrainer_budget"),
             "clean_only": ("clean_only_revised", "cleanonly", "nnUNetTrainer_budget"),
             "ensemble": ("ensemble_revised", "ensemble", None)}
# training labels of an arm -> the benchmark dataset that holds them (see Runner.ids)
LABEL_DATASETS = {"noisy": "noisy", "clean_subset": "clean_subset", "revised": "revised",
                  "clean_only_revised": "clean_only_revised", "ensemble_revised": "ensemble_revised",
                  "revised_band": "revised_band", "clean_full": "source"}
DATASET_KEYS = ["source", "noisy", "clean_subset", "revised", "clean_only_revised", "ensemble_revised",
                "revised_band"]
# the datasets a training seed rewrites (phase 1 is trained per seed); the others are shared by every seed
PER_SEED_KEYS = ("revised", "clean_only_revised", "ensemble_revised", "revised_band")
# margin of the uncertain band (nnUNetv2_nl_revise --uncertain_band's default)
BAND_MARGIN = 0.5
SEED_ID_STRIDE = 10
# the two bars every arm is compared with, per test case
BARS = {"clean_pairs": "nnunet_clean_subset", "imperfect": "nnunet_noisy"}
DEFAULT_ARMS = ["nnunet_noisy", "nnunet_clean_subset", "nnunet_revised", "robust_noisy", "robust_revised",
                "gce_noisy", "coteaching_noisy", "nnunet_clean_full"]

BUDGETS = {  # (epochs, iterations per epoch, validation iterations per epoch, revision epochs)
    # phase 1 is preprocessing: its models (the noise identification network, and nnU-Net on the clean pairs for the
    # clean-only revision it is compared with) learn from the few clean pairs only and get their own, equal budget
    "cpu": (8, 25, 4, 24),
    "full": (1000, 250, 50, 1000),
}


def preprocessing_finished(preprocessed: Path, raw_dataset: Path) -> bool:
    """Whether nnU-Net's preprocessing of one configuration finished for every training case of ``raw_dataset``.

    nnU-Net writes a case's properties (``.pkl``) after its arrays, so a run killed mid-way leaves fewer ``.pkl``
    files than cases: it is then redone (nnU-Net clears the folder first) instead of trained on.
    """
    if not preprocessed.is_dir():
        return False
    num_cases = json.loads((raw_dataset / "dataset.json").read_text())["numTraining"]
    return len(list(preprocessed.glob("*.pkl"))) >= num_cases


class Runner:
    """The steps of one training seed (seed 0 keeps the layout of single-seed work folders, so they resume)."""

    def __init__(self, args: argparse.Namespace, seed: int = 0):
        self.args = args
        self.seed = seed
        self.work = Path(args.work).resolve()
        self.env = dict(os.environ)
        suffix = f"_seed{seed}" if seed else ""
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            self.env[k] = str(self.work / (k + suffix if k == "nnUNet_results" else k))
            Path(self.env[k]).mkdir(parents=True, exist_ok=True)
        self.env["nnUNet_nl_seed"] = str(seed)
        self.predictions = self.work / "predictions" / (f"seed{seed}" if seed else "")
        epochs, iters, val_iters, revision_epochs = BUDGETS[args.mode]
        self.budget = {"epochs": args.epochs or epochs, "iterations": args.iterations or iters,
                       "val_iterations": val_iters, "revision_epochs": args.revision_epochs or revision_epochs}
        self.env.update({"nnUNet_nl_epochs": str(self.budget["epochs"]),
                         "nnUNet_nl_iterations": str(self.budget["iterations"]),
                         "nnUNet_nl_val_iterations": str(self.budget["val_iterations"]),
                         # fold all would validate on its own training cases; the test split is scored instead
                         "nnUNet_nl_skip_final_validation": "1"})
        if args.device == "cpu":
            self.env.setdefault("nnUNet_compile", "0")
            self.env.setdefault("nnUNet_def_n_proc", str(args.np))
            self.env.setdefault("nnUNet_n_proc_DA", str(max(1, args.np - 1)))
        self.bin = Path(sys.executable).parent
        self.log = self.work / "benchmark.log"
        self.ids = {name: args.base_id + i + (SEED_ID_STRIDE * seed if name in PER_SEED_KEYS else 0)
                    for i, name in enumerate(DATASET_KEYS)}
        self.timings: dict[str, float] = {}
        self.timings_file = self.work / f"timings{suffix}.json"
        if self.timings_file.is_file():
            self.timings = json.loads(self.timings_file.read_text())

    # ---------------------------------------------------------------- helpers
    def say(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(self.log, "a") as f:
            f.write(line + "\n")

    def sh(self, cmd: list[str], step: str) -> None:
        self.say("$ " + " ".join(cmd))
        t0 = time.time()
        with open(self.log, "a") as f:
            proc = subprocess.run(cmd, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise SystemExit(f"step '{step}' failed (exit {proc.returncode}); see {self.log}")
        self.timings[step] = self.timings.get(step, 0.0) + time.time() - t0
        self.timings_file.write_text(json.dumps(self.timings, indent=1))

    def folder(self, key: str) -> Path:
        raw = Path(self.env["nnUNet_raw"])
        hits = sorted(raw.glob(f"Dataset{self.ids[key]:03d}_*"))
        return hits[0] if hits else raw / f"Dataset{self.ids[key]:03d}_missing"

    # ---------------------------------------------------------------- steps
    def make_source(self) -> Path:
        a = self.args
        if self.folder("source").is_dir():
            return self.folder("source")
        if a.source in ("jsrt-lung", "jsrt-multi"):
            import convert_jsrt

            structures = ["lung"] if a.source == "jsrt-lung" else ["lung", "heart", "clavicle"]
            name = "JSRTLung" if a.source == "jsrt-lung" else "JSRTMulti"
            convert_jsrt.convert(Path(a.data), self.ids["source"], f"{name}{a.size or ''}", structures, size=a.size,
                                 num_test=a.num_test, seed=a.split_seed,
                                 output_folder=Path(self.env["nnUNet_raw"]) / f"Dataset{self.ids['source']:03d}_{name}")
        elif a.source == "hippocampus":
            import convert_hippocampus

            convert_hippocampus.convert(Path(a.data), self.ids["source"], num_test=a.num_test, seed=a.split_seed,
                                        output_folder=Path(self.env["nnUNet_raw"])
                                        / f"Dataset{self.ids['source']:03d}_Hippocampus")
        else:
            src = Path(a.source)
            if not (src / "dataset.json").is_file() or not (src / "labelsTs").is_dir():
                raise SystemExit(f"--source {src}: need an nnU-Net raw dataset with a held-out imagesTs/labelsTs")
            shutil.copytree(src, Path(self.env["nnUNet_raw"]) / f"Dataset{self.ids['source']:03d}_{src.name[11:]}",
                            symlinks=True)
        return self.folder("source")

    def corrupt(self) -> None:
        if self.folder("noisy").is_dir():
            return
        proto = list(PROTOCOLS[self.args.protocol])
        if self.args.protocol == "markov" and self.args.size:
            # T=180 steps is the protocol at JSRT's 256 px; each step moves the boundary by about one pixel, so the
            # same physical noise at a lower resolution takes proportionally fewer steps
            proto[proto.index("T=180")] = f"T={round(180 * self.args.size / 256)}"
        elif self.args.protocol == "markov" and self.args.source == "hippocampus":
            # 180 steps wipe out a structure a few voxels thick; 20 leave the hippocampus labels at 0.86 Dice against
            # their clean ones, near the 0.84 of the JSRT lung labels under the JSRT setting
            proto[proto.index("T=180")] = "T=20"
        proto += self.args.corrupt_extra
        self.sh([str(self.bin / "nnUNetv2_nl_corrupt"), "-d", str(self.ids["source"]), "-o", str(self.ids["noisy"]),
                 "--name", f"{self.folder('source').name[11:]}_{self.args.protocol}", *proto,
                 "--clean_fraction", str(self.args.clean_fraction), "--seed", str(self.args.seed), "--no_pbar"],
                "corrupt")

    def make_clean_subset(self) -> None:
        if self.folder("clean_subset").is_dir():
            return
        noisy = self.folder("noisy")
        dj = json.loads((noisy / "dataset.json").read_text())
        out = Path(self.env["nnUNet_raw"]) / f"Dataset{self.ids['clean_subset']:03d}_{noisy.name[11:]}_cleansubset"
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        ending = dj["file_ending"]
        cases = [p.name[: -len(ending)] for p in (noisy / "labelsTr_clean").iterdir() if p.name.endswith(ending)]
        for case in cases:
            shutil.copy(noisy / "labelsTr_clean" / f"{case}{ending}", tmp / "labelsTr")
            for c in dj["channel_names"]:
                f = f"{case}_{int(c):04d}{ending}"
                shutil.copy((noisy / "imagesTr" / f).resolve(), tmp / "imagesTr" / f)
        dj["numTraining"] = len(cases)
        (tmp / "dataset.json").write_text(json.dumps(dj, indent=2))
        tmp.rename(out)

    def revision_trainer(self, method: str) -> str | None:
        """The phase-1 trainer of a revision method (``--nin_trainer`` replaces the network's)."""
        if method == "nin" and self.args.nin_trainer:
            return self.args.nin_trainer
        return REVISIONS[method][2]

    def revision_model(self, method: str) -> str:
        """The trained phase-1 model folder of a revision (run first)."""
        self.revise(method)
        manifest = json.loads((self.folder(REVISIONS[method][0]) / "labelsTr_revision.json").read_text())
        used = manifest.get("model", {}).get("model_folder")
        return used if used and Path(used).is_dir() else str(
            Path(self.env["nnUNet_results"]) / manifest["aux_dataset"] /
            f"{self.revision_trainer(method)}__nnUNetPlans__{self.train_configuration()}")

    def revise(self, method: str, band: bool = False) -> None:
        key, suffix, _ = REVISIONS[method]
        if band:  # the network's revision again from its trained model, with the uncertain band
            key, suffix = "revised_band", "revised_band"
        trainer = self.revision_trainer(method)
        if self.folder(key).is_dir():
            return
        noisy = self.folder("noisy")
        out_name = f"Dataset{self.ids[key]:03d}_{noisy.name[11:]}_{suffix}"
        cmd = [str(self.bin / "nnUNetv2_nl_revise"), "-d", str(self.ids["noisy"]), "--method", method,
               "-o", out_name, "--truth", str(self.folder("source") / "labelsTr"), "-device", self.args.device,
               "-np", str(self.args.np), "--no_pbar"]
        if self.args.disable_tta:
            cmd.append("--disable_tta")
        if self.args.cpu_plans:
            cmd.append("--cpu_plans")
        if self.args.realign and method in ("nin", "ensemble"):
            cmd.append("--realign")
        if method == "ensemble":
            # the two phase-1 models of the other revisions, reused: the ensemble costs their two trainings
            cmd += ["-tr", self.revision_trainer("nin"), "--model", self.revision_model("nin"), "--clean_only_tr",
                    REVISIONS["clean_only"][2], "--clean_only_model", self.revision_model("clean_only")]
        elif band:
            cmd += ["-tr", trainer, "--model", self.revision_model(method), "--uncertain_band", str(BAND_MARGIN)]
        else:
            cmd += ["-tr", trainer]
        saved = self.env["nnUNet_nl_epochs"]
        self.env["nnUNet_nl_epochs"] = str(self.budget["revision_epochs"])
        try:
            self.sh(cmd, f"revise_{method}" + ("_band" if band else ""))
        finally:
            self.env["nnUNet_nl_epochs"] = saved

    def train_configuration(self) -> str:
        """The configuration every model trains: the planned one, or with --cpu_plans its CPU variant."""
        return self.args.configuration + ("_cpu" if self.args.cpu_plans else "")

    def stored_scores(self, arm: str) -> dict | None:
        """The test scores of an arm this work folder already finished with this seed (None if it has none)."""
        result_file = self.predictions / arm / "scores.json"
        return json.loads(result_file.read_text()) if result_file.is_file() else None

    def train_and_score(self, arm: str) -> dict:
        labels, trainer = ARMS[arm]
        key = LABEL_DATASETS[labels]
        ds = self.ids[key]
        pred = self.predictions / arm
        stored = self.stored_scores(arm)
        if stored is not None:
            return stored
        config = self.args.configuration
        pre = Path(self.env["nnUNet_preprocessed"]) / self.folder(key).name / f"nnUNetPlans_{config}"
        if not preprocessing_finished(pre, self.folder(key)):
            self.sh([str(self.bin / "nnUNetv2_plan_and_preprocess"), "-d", str(ds), "-c", config,
                     "-np", str(self.args.np)], f"preprocess_{key}")
        if self.args.cpu_plans:
            from nnunet_noisylabels.common.cpu_plans import add_cpu_configuration

            config = add_cpu_configuration(pre.parent, config)
        if trainer.startswith("nnUNetTrainerCLSLR"):
            self.find_issues(ds, config)
        out = self.arm_fold(arm)
        if not (out / "checkpoint_final.pth").is_file():
            cont = ["--c"] if (out / "checkpoint_latest.pth").is_file() else []
            self.sh([str(self.bin / "nnUNetv2_train"), str(ds), config, "all", "-tr", trainer,
                     "-device", self.args.device, *cont], f"train_{arm}")
        tmp_pred = pred.with_name(pred.name + ".tmp")
        shutil.rmtree(tmp_pred, ignore_errors=True)
        self.sh([str(self.bin / "nnUNetv2_predict"), "-i", str(self.folder("source") / "imagesTs"), "-o", str(tmp_pred),
                 "-d", str(ds), "-c", config, "-f", "all", "-tr", trainer, "-device", self.args.device,
                 "-npp", "0", "-nps", "0", "--disable_progress_bar",
                 *(["--disable_tta"] if self.args.disable_tta else [])], f"predict_{arm}")
        scores = score_folder(self.folder("source") / "labelsTs", tmp_pred,
                              json.loads((self.folder("source") / "dataset.json").read_text()))
        (tmp_pred / "scores.json").write_text(json.dumps(scores, indent=1))
        shutil.rmtree(pred, ignore_errors=True)
        tmp_pred.rename(pred)
        return scores

    def arm_fold(self, arm: str) -> Path:
        """The fold folder of an arm's trained model (nnU-Net's results layout, fold ``all``)."""
        labels, trainer = ARMS[arm]
        return (Path(self.env["nnUNet_results"]) / self.folder(LABEL_DATASETS[labels]).name /
                f"{trainer}__nnUNetPlans__{self.train_configuration()}" / "fold_all")

    def peer_activity(self, arm: str) -> dict | None:
        """How often a NoiseRobustTrainer arm's peer acted, per epoch (from its checkpoint's log): the share of
        voxels whose target the peer term changed (mean of the members), and the share of voxels in the ignored band
        that the peer supervised (0 where the band is ignored). None for other trainers."""
        trainer = ARMS[arm][1]
        if not trainer.startswith("NoiseRobustTrainer"):
            return None
        import torch

        ckpt = self.arm_fold(arm) / "checkpoint_final.pth"
        if not ckpt.is_file():
            return None
        log = torch.load(ckpt, map_location="cpu", weights_only=False)["logging"]
        members = sorted(k for k in log if k.startswith("peer_override_net_"))
        override = np.mean([log[k] for k in members], 0) if members else []
        band = log.get("peer_band_fraction", [0.0] * len(override))
        return {"override_per_epoch": [round(float(x), 5) for x in override],
                "band_per_epoch": [round(float(x), 5) for x in band]}

    def find_issues(self, ds: int, config: str) -> None:
        """Out-of-fold probabilities (5-fold CV with --npz) and confident-learning issue maps for the CLSLR arm."""
        name = self.folder("noisy").name
        if (Path(self.env["nnUNet_preprocessed"]) / name / "label_issues" / "label_issues.csv").is_file():
            return
        cv = "nnUNetTrainer_budget"
        for fold in range(5):
            out = Path(self.env["nnUNet_results"]) / name / f"{cv}__nnUNetPlans__{config}" / f"fold_{fold}"
            if not (out / "checkpoint_final.pth").is_file():
                self.sh([str(self.bin / "nnUNetv2_train"), str(ds), config, str(fold), "-tr", cv, "--npz",
                         "-device", self.args.device], f"cv_fold{fold}")
        self.sh([str(self.bin / "nnUNetv2_nl_find_issues"), "-d", str(ds), "-c", config, "-tr", cv, "--no_pbar"],
                "find_issues")

    # ---------------------------------------------------------------- main
    def prepare(self) -> None:
        """What every seed shares: the settings, the source dataset, its corrupted copy and the clean subset."""
        a = self.args
        self.say(f"benchmark in {self.work}: source={a.source} protocol={a.protocol} clean={a.clean_fraction} "
                 f"budget={self.budget} device={a.device} seeds={a.seeds}")
        settings = {"source": a.source, "size": a.size, "protocol": a.protocol, "corrupt_extra": a.corrupt_extra,
                    "clean_fraction": a.clean_fraction, "seed": a.seed, "num_test": a.num_test,
                    "split_seed": a.split_seed, "configuration": a.configuration, "device": a.device,
                    "disable_tta": a.disable_tta, "nin_trainer": self.revision_trainer("nin"), "realign": a.realign,
                    "budget": self.budget, **({"cpu_plans": True} if a.cpu_plans else {})}
        write_settings(self.work / "settings.json", settings)
        self.make_source()
        self.corrupt()
        self.make_clean_subset()

    def run(self) -> tuple[dict[str, dict], list[list]]:
        """Phase 1 and every arm with this seed. Returns ({arm: scores}, label-quality rows)."""
        a = self.args
        if any(ARMS[arm][0] == "revised" for arm in a.arms) or a.label_quality:
            self.revise("nin")
        if a.label_quality or any(ARMS[arm][0] == "clean_only_revised" for arm in a.arms):
            self.revise("clean_only")
        if any(ARMS[arm][0] == "ensemble_revised" for arm in a.arms):
            self.revise("ensemble")
        if any(ARMS[arm][0] == "revised_band" for arm in a.arms):
            self.revise("nin", band=True)
        scores = {}
        for i, arm in enumerate(a.arms, 1):
            self.say(f"seed {self.seed}, arm {i}/{len(a.arms)}: {arm} ({ARMS[arm][1]} on {ARMS[arm][0]} labels)")
            scores[arm] = self.train_and_score(arm)
            self.say(f"  -> {arm}: Dice {scores[arm]['summary']['dice_mean']:.4f}")
        for arm in ARMS:  # arms an earlier call of this folder finished (same settings): they stay in the tables
            if arm not in scores and (stored := self.stored_scores(arm)) is not None:
                scores[arm] = stored
        for arm, s in scores.items():
            s["train_s"] = self.timings.get(f"train_{arm}", float("nan"))
            s["peer"] = self.peer_activity(arm)
        return scores, label_quality(self.work, [self.ids[REVISIONS[m][0]] for m in REVISIONS])


def draw_args(args: argparse.Namespace, draw: int) -> argparse.Namespace:
    """The arguments of one noise/clean-pair draw: ``--seed`` is the draw; a draw other than ``--seed`` is a complete
    benchmark in the ``drawN/`` sub-folder of the work folder."""
    work = Path(args.work) if draw == args.seed else Path(args.work) / f"draw{draw}"
    return argparse.Namespace(**{**vars(args), "seed": draw, "work": str(work)})


def run_benchmark(args: argparse.Namespace) -> None:
    """Every draw's and seed's run, then the tables over all runs."""
    per_run, quality, runs, first = [], [], [], None
    for draw in args.draws or [args.seed]:
        runners = [Runner(draw_args(args, draw), s) for s in args.seeds]
        runners[0].prepare()
        first = first or runners[0]
        for r in runners:
            scores, q = r.run()
            per_run.append(scores)
            quality.append(q)
            runs.append((draw, r.seed))
    # this call's arms, then those every run of an earlier call finished
    arms = [*args.arms, *(arm for arm in ARMS if arm not in args.arms and all(arm in s for s in per_run))]
    write_tables(first, per_run, quality, runs=runs, work=Path(args.work).resolve(), arms=arms)


def arm_rows(arms: list[str], per_seed: list[dict[str, dict]]) -> list[dict]:
    """One row per arm: means over runs (seeds, draws) and cases, spread over runs, paired differences to the bars
    with CIs."""
    from bench_stats import bootstrap_ci, case_dice, case_means, paired_difference

    means = {arm: case_means([case_dice(s[arm]) for s in per_seed]) for arm in arms}
    rows = []
    for arm in arms:
        summaries = [s[arm]["summary"] for s in per_seed]
        mean, low, high = bootstrap_ci(list(means[arm].values()))
        row = {"arm": arm, "labels": ARMS[arm][0], "trainer": ARMS[arm][1], "runs": len(per_seed),
               "dice_mean": mean, "dice_ci_low": low, "dice_ci_high": high,
               "dice_sd": float(np.std(list(means[arm].values()))),
               "dice_seed_sd": float(np.std([x["dice_mean"] for x in summaries])),
               "hd95_median": float(np.median([x["hd95_median"] for x in summaries]))}
        for bar_name, bar in BARS.items():
            d = paired_difference(means[arm], means[bar]) if bar in means and bar != arm else (float("nan"),) * 4
            row.update({f"vs_{bar_name}": d[0], f"vs_{bar_name}_ci_low": d[1], f"vs_{bar_name}_ci_high": d[2]})
        row.update({k: float(np.mean([x[k] for x in summaries])) for k in summaries[0]
                    if k.startswith("dice_") and k[5:].isdigit()})
        timed = [s[arm]["train_s"] for s in per_seed if np.isfinite(s[arm]["train_s"])]
        row["train_s"] = round(float(np.mean(timed))) if timed else float("nan")  # nan: no timing recorded
        rows.append(row)
    return rows


def quality_rows(per_seed: list[list]) -> list[list]:
    """Label quality over runs: per kind of labels, the mean over runs of the per-run mean Dice vs clean, the sd
    over runs, and the number of cases."""
    kinds = [r[0] for r in per_seed[0]] if per_seed else []
    out = []
    for kind in kinds:
        vals = [r for q in per_seed for r in q if r[0] == kind]
        out.append([kind, float(np.mean([r[1] for r in vals])), float(np.std([r[1] for r in vals])), vals[0][3],
                    len(vals)])
    return out


def write_tables(runner: Runner, per_seed: list[dict[str, dict]], quality_per_seed: list[list],
                 runs: list[tuple[int, int]] | None = None, work: Path | None = None,
                 arms: list[str] | None = None) -> None:
    """The tables of every run (``runs``: (draw, training seed) per entry of ``per_seed``; default one draw,
    ``--seed``, with each of ``--seeds``) of ``arms`` (default ``--arms``) into ``work`` (default the runner's)."""
    from bench_stats import case_dice, format_difference

    a, work = runner.args, work or runner.work
    arms = arms or a.arms
    runs = runs or [(a.seed, s) for s in a.seeds]
    draws = sorted({d for d, _ in runs})
    rows = arm_rows(arms, per_seed)
    with open(work / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(work / "per_case.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "draw", "seed", "case", "dice"])
        for (draw, seed), scores in zip(runs, per_seed):
            for arm in arms:
                w.writerows([arm, draw, seed, c, d] for c, d in case_dice(scores[arm]).items())
    quality = quality_rows(quality_per_seed)
    with open(work / "label_quality.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["labels", "dice_vs_clean_mean", "dice_vs_clean_std", "cases", "runs"])
        w.writerows(quality)
    b = runner.budget
    md = [f"Source `{a.source}`{f' ({a.size}x{a.size})' if a.size else ''}, protocol `{a.protocol}`, "
          f"clean fraction {a.clean_fraction}, noise/clean-pair draws {draws}, training seeds {a.seeds}, "
          f"{a.num_test} held-out test cases; budget {b['epochs']} epochs x {b['iterations']} iterations, phase-1 "
          f"models {b['revision_epochs']} epochs x {b['iterations']} iterations (configuration `{a.configuration}`, "
          f"device `{a.device}`); machine: {platform.machine()}, {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}.",
          "", "Dice: mean over runs (draws x seeds) and test cases [bootstrap 95% CI]; differences: paired per "
          "test case (each case's mean over runs), bootstrap 95% CI over cases, * where it excludes 0.", "",
          "| arm | labels | trainer | test Dice [95% CI] | vs nnU-Net on the clean pairs | vs nnU-Net on the imperfect "
          "labels | sd over runs | HD95 (median) | per structure Dice | train time (s) |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        per = ", ".join(f"{k[5:]}: {v:.3f}" for k, v in r.items() if k.startswith("dice_") and k[5:].isdigit())
        md.append(f"| {r['arm']} | {r['labels']} | `{r['trainer']}` | {r['dice_mean']:.4f} [{r['dice_ci_low']:.4f}, "
                  f"{r['dice_ci_high']:.4f}] | "
                  + " | ".join(format_difference(r[f"vs_{n}"], r[f"vs_{n}_ci_low"], r[f"vs_{n}_ci_high"])
                               for n in BARS)
                  + f" | {r['dice_seed_sd']:.4f} | {r['hd95_median']:.2f} | {per} | {r['train_s']} |")
    peer = {arm: [s[arm].get("peer") for s in per_seed] for arm in arms
            if any(s[arm].get("peer") for s in per_seed)}
    if peer:
        md += ["", "How often the peer acted (NoiseRobustTrainer arms; share of all training voxels per epoch, mean "
               "over runs): where the label is known, the peer term changed the target; in the ignored band, the "
               "peer supervised.", "", "| arm | peer term, mean over epochs | peer term, last epoch | band "
               "supervised by the peer, mean over epochs | per epoch (peer term) |", "| --- | --- | --- | --- | --- |"]
        for arm, logs in peer.items():
            logs = [r for r in logs if r and r["override_per_epoch"]]
            over = np.mean([r["override_per_epoch"] for r in logs], 0)
            band = np.mean([r["band_per_epoch"] for r in logs], 0)
            md.append(f"| {arm} | {over.mean():.4f} | {over[-1]:.4f} | {band.mean():.4f} | "
                      f"{' '.join(f'{x:.3f}' for x in over)} |")
        (work / "peer_activity.json").write_text(json.dumps(peer, indent=1))
    if quality:
        md += ["", "| training labels of the imperfect-only cases | Dice vs clean (mean over runs ± sd) | cases | "
               "runs |", "| --- | --- | --- | --- |"]
        md += [f"| {q[0]} | {q[1]:.4f} ± {q[2]:.4f} | {q[3]} | {q[4]} |" for q in quality]
    (work / "results.md").write_text("\n".join(md) + "\n")
    runner.say(f"tables: {work / 'results.md'}, {work / 'results.csv'}, {work / 'per_case.csv'}")
    print("\n".join(md))


def write_settings(path: Path, settings: dict) -> None:
    """Record the run's settings; a resumed run must use the same ones (its finished steps would not match)."""
    if path.is_file():
        old = json.loads(path.read_text())
        changed = {k: (old.get(k), v) for k, v in settings.items() if k in old and old[k] != v}
        if changed:
            raise SystemExit(f"{path.parent} was started with other settings {changed} (old, new); use another "
                             f"--work folder or the original settings")
    path.write_text(json.dumps(settings, indent=1))


def score_folder(ref: Path, pred: Path, dataset_json: dict) -> dict:
    """Dice and HD95 per structure and case (plugin metrics on nnU-Net's reader), with a summary."""
    from nnunet_noisylabels.common.metrics import dice, hd95
    from nnunet_noisylabels.common.raw_dataset import read_label

    labels = sorted(int(v) for k, v in dataset_json["labels"].items() if k not in ("background", "ignore"))
    ending = dataset_json["file_ending"]
    per_case = {}
    for f in sorted(p for p in ref.iterdir() if p.name.endswith(ending)):
        r, props = read_label(f, dataset_json)
        p, _ = read_label(pred / f.name, dataset_json)
        spacing = list(props.get("spacing", [1.0] * r.ndim))[-r.ndim:]
        per_case[f.name] = {str(k): {"dice": dice(r == k, p == k), "hd95": hd95(r == k, p == k, spacing)}
                            for k in labels}
    summary = {}
    dices = np.array([[c[str(k)]["dice"] for k in labels] for c in per_case.values()])
    hds = np.array([[c[str(k)]["hd95"] for k in labels] for c in per_case.values()])
    summary["dice_mean"] = float(dices.mean())
    summary["dice_sd"] = float(dices.mean(1).std())
    summary["hd95_median"] = float(np.median(hds))
    for j, k in enumerate(labels):
        summary[f"dice_{k}"] = float(dices[:, j].mean())
        summary[f"hd95_{k}"] = float(np.median(hds[:, j]))
    return {"summary": summary, "per_case": per_case}


def label_quality(work: Path, dataset_ids: list[int]) -> list[list]:
    """Dice vs clean of the imperfect and of the revised labels of the imperfect-only training cases, from the
    revision reports (``labelsTr_revision_report/report.json``) of the benchmark's revised datasets (``dataset_ids``;
    other revisions a user made in the same work folder are left out)."""
    out = []
    reports = sorted(r for i in dataset_ids
                     for r in (work / "nnUNet_raw").glob(f"Dataset{i:03d}_*/labelsTr_revision_report/report.json"))
    for report in reports:
        rep = json.loads(report.read_text())
        cases = [c for c in rep["cases"].values() if "dice_revised" in c and c.get("source") == "revised"]
        if not cases:
            continue
        imp = np.array([c["dice_imperfect"] for c in cases])
        rev = np.array([c["dice_revised"] for c in cases])
        if not out:
            out.append(["imperfect (as given)", float(imp.mean()), float(imp.std()), len(cases)])
        out.append([f"revised, method {rep['method']}", float(rev.mean()), float(rev.std()), len(cases)])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True,
                   help="jsrt-lung, jsrt-multi, hippocampus (converted from --data), or a raw dataset folder with "
                        "imagesTs/labelsTs")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder holding jsrt/, hippocampus/")
    p.add_argument("--size", type=int, default=None, help="JSRT: downsample to SIZE x SIZE")
    p.add_argument("--num_test", type=int, default=50, help="held-out test cases (never used in training/revision)")
    p.add_argument("--split_seed", type=int, default=0)
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), required=True)
    p.add_argument("--corrupt_extra", nargs=argparse.REMAINDER, default=[],
                   help="extra arguments for nnUNetv2_nl_corrupt (must come last)")
    p.add_argument("--clean_fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="seed of the corruption and of the clean subset")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds: phase 1 and every arm are trained once per seed (nnUNet_nl_seed); the "
                        "tables report means over seeds and paired CIs per test case")
    p.add_argument("--draws", type=int, nargs="+", default=None,
                   help="noise/clean-pair draws (the corruption's --seed): the whole benchmark is repeated for each, "
                        "the draws other than --seed in drawN/ sub-folders; tables over all draws and seeds "
                        "(default: --seed only)")
    p.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=sorted(ARMS))
    p.add_argument("--no_label_quality", dest="label_quality", action="store_false",
                   help="skip the clean-only revision baseline")
    p.add_argument("--mode", choices=sorted(BUDGETS), default="cpu")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--revision_epochs", type=int, default=None,
                   help="epochs of the phase-1 models (noise identification network; clean-only baseline)")
    p.add_argument("-c", "--configuration", default=None, help="default 2d for JSRT, 3d_fullres for hippocampus")
    p.add_argument("--device", default="cpu")
    p.add_argument("--disable_tta", action="store_true",
                   help="no test-time mirroring, for the revision and every arm's test predictions (3D on CPU)")
    p.add_argument("--nin_trainer", default=None,
                   help=f"phase-1 trainer of the network's revision (default {REVISIONS['nin'][2]}; e.g. "
                        "NoiseIdentificationTrainer_labelShift_budget)")
    p.add_argument("--realign", action="store_true",
                   help="nnUNetv2_nl_revise --realign for the network's (and the ensemble's) revision")
    p.add_argument("--cpu_plans", action="store_true",
                   help="train every model (phase 1 and the arms) with the CPU variant of the configuration "
                        "(CONFIGURATION_cpu, see nnUNetv2_nl_plan_cpu): 3D on a CPU")
    p.add_argument("-np", type=int, default=2)
    p.add_argument("--base_id", type=int, default=700)
    p.add_argument("--work", required=True, help="folder of the benchmark's nnU-Net folders and results")
    args = p.parse_args(argv)
    if args.configuration is None:
        args.configuration = "3d_fullres" if args.source == "hippocampus" else "2d"
    if len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds must be distinct")
    if args.draws and len(set(args.draws)) != len(args.draws):
        p.error("--draws must be distinct")
    run_benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
