"""``nnUNetv2_nl_demo``: the whole workflow end to end on a small built-in synthetic dataset, on CPU."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from nnunet_noisylabels.utilities.raw_dataset import load_dataset_json

DEMO_ID = 990


def _sh(cmd: list[str], env: dict, log: Path) -> None:
    print("  $ " + " ".join(cmd), flush=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"ERROR: `{' '.join(cmd)}` exited {proc.returncode}; see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nnUNetv2_nl_demo", description=__doc__)
    parser.add_argument("-o", "--output", default="demo_output",
                        help="folder for nnUNet_raw/preprocessed/results of the demo (default: ./demo_output)")
    parser.add_argument("--device", default="cpu", help="torch device for training and prediction (default: cpu)")
    args = parser.parse_args(argv)

    from nnunet_noisylabels.evaluation.segmentation import evaluate_folder
    from nnunet_noisylabels.utilities.synthetic import write_synthetic_dataset

    out = Path(args.output).resolve()
    env = dict(os.environ)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[k] = str(out / k)
        Path(env[k]).mkdir(parents=True, exist_ok=True)
    env.setdefault("nnUNet_compile", "0")
    env.setdefault("nnUNet_def_n_proc", "2")
    env.setdefault("nnUNet_n_proc_DA", "1")
    log = out / "demo.log"
    bindir = Path(sys.executable).parent
    t0 = time.time()

    print(f"[1] synthetic 2D dataset with a planted annotation error (labels dilated by 2 px) in {env['nnUNet_raw']}")
    folder = write_synthetic_dataset(env["nnUNet_raw"], DEMO_ID, name="NLDemo", dim=2, num_classes=2,
                                     num_cases=20, num_clean=3, num_test=10, noise="dilate", seed=0)
    dj = load_dataset_json(folder)
    print(f"[2] nnU-Net planning and preprocessing")
    _sh([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", str(DEMO_ID), "-c", "2d", "-np", "2"], env, log)
    results = {}
    for trainer in ["nnUNetTrainer_NLdebug"]:
        print(f"[3] training {trainer} on the imperfect labels")
        _sh([str(bindir / "nnUNetv2_train"), str(DEMO_ID), "2d", "all", "-tr", trainer, "-device", args.device],
            env, log)
        pred = out / "predictions" / trainer
        _sh([str(bindir / "nnUNetv2_predict"), "-i", str(folder / "imagesTs"), "-o", str(pred), "-d", str(DEMO_ID),
             "-c", "2d", "-f", "all", "-tr", trainer, "-device", args.device, "-npp", "0", "-nps", "0",
             "--disable_progress_bar"], env, log)
        results[trainer] = evaluate_folder(folder / "labelsTs", pred, dj)["foreground_mean"]["Dice"]
    print(f"\nTest Dice on {len(list((folder / 'labelsTs').iterdir()))} held-out cases (clean reference):")
    for trainer, d in results.items():
        print(f"  {trainer:40s} {d:.3f}")
    print(f"\nDone in {time.time() - t0:.0f} s. Log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
