"""``nnUNetv2_nl_demo``: the whole method end to end on a small built-in synthetic dataset, on CPU.

1. write a clean synthetic 2D dataset with a held-out test split;
2. corrupt its training labels (``nnUNetv2_nl_corrupt``, systematic over-annotation), keeping a few clean pairs;
3. revise the labels with the noise identification network (``nnUNetv2_nl_revise``, phase 1);
4. train plain nnU-Net on the imperfect labels and ``NoiseRobustTrainer`` on the revised ones (phase 2), both with
   the stock ``nnUNetv2_train`` at the same small budget, and predict the test split with ``nnUNetv2_predict``;
5. print the label quality (imperfect -> revised) and the test Dice of both.

Every step is a stock command run in a subprocess, exactly as a user would type it; the log holds their output.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SOURCE_ID, NOISY_ID, REVISED_ID = 990, 991, 992


def _sh(cmd: list[str], env: dict, log: Path) -> None:
    print("  $ " + " ".join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd)), flush=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"ERROR: `{' '.join(cmd)}` exited {proc.returncode}; see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nnUNetv2_nl_demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("-o", "--output", default="demo_output",
                        help="folder for the demo's nnUNet_raw/preprocessed/results (default: ./demo_output); "
                             "it is emptied first")
    parser.add_argument("--device", default="cpu", help="torch device for training and prediction (default: cpu)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of every training (default: 5)")
    parser.add_argument("--iterations", type=int, default=15, help="iterations per epoch (default: 15)")
    args = parser.parse_args(argv)

    from nnunet_noisylabels.common.evaluation import evaluate_folder
    from nnunet_noisylabels.common.raw_dataset import load_dataset_json
    from nnunet_noisylabels.common.synthetic import write_synthetic_dataset

    out = Path(args.output).resolve()
    marker = out / ".nnunet_noisylabels_demo"
    if out.exists() and any(out.iterdir()):
        if not marker.is_file():
            print(f"ERROR: {out} exists and is not a folder this demo made; pass another -o", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    marker.touch()
    env = dict(os.environ)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[k] = str(out / k)
        Path(env[k]).mkdir(parents=True, exist_ok=True)
    env.setdefault("nnUNet_compile", "0")
    env.setdefault("nnUNet_def_n_proc", "2")
    env.setdefault("nnUNet_n_proc_DA", "1")
    env.update({"nnUNet_nl_epochs": str(args.epochs), "nnUNet_nl_iterations": str(args.iterations),
                "nnUNet_nl_val_iterations": "2"})
    log = out / "demo.log"
    bindir = Path(sys.executable).parent
    cmd = lambda name: str(bindir / name)  # noqa: E731
    t0 = time.time()

    print(f"[1/5] clean synthetic 2D dataset (24 training + 10 test cases) in {env['nnUNet_raw']}")
    source = write_synthetic_dataset(env["nnUNet_raw"], SOURCE_ID, name="NLDemo", dim=2, num_classes=2,
                                     num_cases=24, num_clean=0, num_test=10, noise="none", seed=0)
    print("[2/5] corrupt the training labels: over-annotation by dilation (radius 2-4 px), 4 clean pairs kept")
    _sh([cmd("nnUNetv2_nl_corrupt"), "-d", str(SOURCE_ID), "-o", str(NOISY_ID), "--name", "NLDemoNoisy",
         "--noise", "dilate", "--param", "radius=2,4", "--clean_count", "4", "--seed", "0", "--no_pbar"], env, log)
    print("[3/5] phase 1: train the noise identification network on the clean pairs and revise the other labels")
    _sh([cmd("nnUNetv2_nl_revise"), "-d", str(NOISY_ID), "-o", f"Dataset{REVISED_ID}_NLDemoRevised",
         "-tr", "NoiseIdentificationTrainer_budget", "--truth", str(source / "labelsTr"), "-device", args.device,
         "-np", "2", "--no_pbar"], env, log)
    raw = Path(env["nnUNet_raw"])
    report = json.loads(next(raw.glob(f"Dataset{REVISED_ID}_*/labelsTr_revision_report/report.json")).read_text())
    label_mean = report["mean"]  # over the imperfect-only (revised) cases

    dj = load_dataset_json(source)
    results = {}
    for step, (ds, trainer, what) in enumerate([(NOISY_ID, "nnUNetTrainer_budget", "plain nnU-Net, imperfect labels"),
                                                (REVISED_ID, "NoiseRobustTrainer_budget",
                                                 "NoiseRobustTrainer, revised labels")], start=4):
        print(f"[{step}/5] {what}: plan, preprocess, train ({args.epochs}x{args.iterations} iterations), predict")
        _sh([cmd("nnUNetv2_plan_and_preprocess"), "-d", str(ds), "-c", "2d", "-np", "2"], env, log)
        _sh([cmd("nnUNetv2_train"), str(ds), "2d", "all", "-tr", trainer, "-device", args.device], env, log)
        pred = out / "predictions" / trainer
        _sh([cmd("nnUNetv2_predict"), "-i", str(source / "imagesTs"), "-o", str(pred), "-d", str(ds), "-c", "2d",
             "-f", "all", "-tr", trainer, "-device", args.device, "-npp", "0", "-nps", "0",
             "--disable_progress_bar"], env, log)
        results[what] = evaluate_folder(source / "labelsTs", pred, dj)["foreground_mean"]["Dice"]

    print(f"\nLabel quality of the {label_mean['num_with_truth']} imperfect-only training cases (Dice vs clean "
          f"labels):")
    print(f"  imperfect {label_mean['dice_imperfect']:.3f} -> revised {label_mean['dice_revised']:.3f}")
    print("Test Dice on the 10 held-out cases:")
    for what, d in results.items():
        print(f"  {what:40s} {d:.3f}")
    print(f"\nDone in {time.time() - t0:.0f} s. Log: {log}; revision report: "
          f"{next(raw.glob(f'Dataset{REVISED_ID}_*')) / 'labelsTr_revision_report' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
