"""Measure the revision (fusion) rules of a trained noise identification network.

Every rule of ``FUSION_RULES`` is applied to the SAME trained ``NoiseIdentificationTrainer*`` model (the rule only
changes how the three heads are fused at inference), and the revised masks of held-out cases are scored against the
clean labels, next to the Dice of the imperfect labels they were revised from.

Usage on a trained model (auxiliary dataset layout, see nnunet_noisylabels/revision/aux_dataset.py):

    python benchmarks/nin_fusion_rules.py model --model_folder $nnUNet_results/Dataset.../Trainer__plans__2d \
        --images .../imagesTs --clean .../labelsTs_clean [-f all]

Synthetic end-to-end (plan, preprocess, train tiny, evaluate), for each planted-noise kind:

    python benchmarks/nin_fusion_rules.py synthetic --kinds dilate box --num_classes 2
    python benchmarks/nin_fusion_rules.py synthetic --kinds dilate --num_classes 3

Measured (CPU, defaults: 8 training / 8 held-out 64x64 cases, plans narrowed to <= 32 features, 6 epochs x 25
iterations, seed 0; mean foreground Dice of held-out cases against the clean labels; one seed, so differences
below ~0.01 are noise):

| setting | imperfect | revised | noise | mean | product |
|---|---|---|---|---|---|
| K=2, dilate 3-4 px | 0.712 | 0.978 | 0.976 | 0.982 | 0.982 |
| K=2, boxes (weak) | 0.823 | 0.967 | 0.958 | 0.970 | 0.968 |
| K=3, dilate 3-4 px | 0.698 | 0.958 | 0.881 | 0.955 | 0.956 |

``mean`` (the default) is best or within 0.003 of the best in every setting; ``noise`` alone (editing the imperfect
label only where the noise heads fire) falls behind in the multi-class setting.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

from nnunet_noisylabels.common.metrics import mean_foreground_dice  # noqa: E402
from nnunet_noisylabels.revision.nin.fusion import FUSION_RULES  # noqa: E402
from nnunet_noisylabels.revision.aux_dataset import label_channel_indices  # noqa: E402


def mean_dice(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    return mean_foreground_dice(a, b, range(1, num_classes))


def evaluate_rules(model_folder: str, images: str, clean: str, fold: str = "all",
                   rules: tuple[str, ...] = FUSION_RULES, checkpoint: str = "checkpoint_final.pth") -> dict:
    """Predict ``images`` with every fusion rule; return {rule: mean Dice} plus ``'imperfect'``."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_noisylabels._autoenv import register

    register()  # the predictor looks the trainer class up through nnUNet_extTrainer
    dataset_json = load_json(os.path.join(model_folder, "dataset.json"))
    num_image, label_ch = label_channel_indices(dataset_json)
    num_classes = len(label_ch) + 1
    ending = dataset_json["file_ending"]
    io = determine_reader_writer_from_dataset_json(dataset_json, os.path.join(images, os.listdir(images)[0]))()
    cases = sorted({f[: -len(ending) - 5] for f in os.listdir(images) if f.endswith(ending)})

    truth, imperfect = {}, {}
    for c in cases:
        truth[c] = io.read_seg(os.path.join(clean, c + ending))[0][0]
        chans = io.read_images([os.path.join(images, f"{c}_{i:04d}{ending}") for i in label_ch])[0]
        lab = np.zeros(chans.shape[1:], np.uint8)
        for k in range(len(label_ch)):
            lab[chans[k] > 0.5] = k + 1
        imperfect[c] = lab
    results = {"imperfect": float(np.mean([mean_dice(imperfect[c], truth[c], num_classes) for c in cases]))}

    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, (fold if fold == "all" else int(fold),), checkpoint)
    for rule in rules:
        predictor.network.fusion = rule
        with tempfile.TemporaryDirectory() as out:
            predictor.predict_from_files_sequential(images, out, save_probabilities=False, overwrite=True)
            results[rule] = float(np.mean([
                mean_dice(io.read_seg(os.path.join(out, c + ending))[0][0], truth[c], num_classes) for c in cases]))
    return results


def run_synthetic(kind: str, num_classes: int, epochs: int, iters: int, n_train: int, n_test: int, seed: int,
                  workdir: Path, narrow: bool = True) -> dict:
    """Build a synthetic auxiliary dataset with planted noise, train through nnU-Net, evaluate every rule."""
    from skimage.io import imsave

    from test_nin_trainer_nnunet import shrink_plans, write_aux_dataset

    raw = workdir / "raw"
    name = "Dataset902_NINbench"
    held_out = write_aux_dataset(raw, name, n_train, n_test, num_classes, kind, seed=seed)
    clean_dir = raw / name / "labelsTs_clean"
    clean_dir.mkdir()
    for case, (clean, _) in held_out.items():
        imsave(clean_dir / f"{case}.png", clean, check_contrast=False)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT),
               nnUNet_extTrainer=str(REPO_ROOT / "nnunet_noisylabels" / "nnunet_ext"),
               nnUNet_raw=str(raw), nnUNet_preprocessed=str(workdir / "pre"), nnUNet_results=str(workdir / "res"),
               nnUNet_compile="0", nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1", OMP_NUM_THREADS="1",
               nnUNet_nl_epochs=str(epochs), nnUNet_nl_iterations=str(iters), nnUNet_nl_val_iterations="2")
    bindir = Path(sys.executable).parent
    subprocess.run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", "902", "-c", "2d", "-np", "1"], env=env,
                   check=True, capture_output=True)
    if narrow:
        shrink_plans(workdir / "pre", name)
    subprocess.run([str(bindir / "nnUNetv2_train"), "902", "2d", "all", "-tr", "NoiseIdentificationTrainer_budget",
                    "-device", "cpu"], env=env, check=True, capture_output=True)
    model = workdir / "res" / name / "NoiseIdentificationTrainer_budget__nnUNetPlans__2d"
    return evaluate_rules(str(model), str(raw / name / "imagesTs"), str(clean_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("model")
    m.add_argument("--model_folder", required=True)
    m.add_argument("--images", required=True)
    m.add_argument("--clean", required=True)
    m.add_argument("-f", default="all")
    s = sub.add_parser("synthetic")
    s.add_argument("--kinds", nargs="+", default=["dilate", "box"])
    s.add_argument("--num_classes", type=int, default=2)
    s.add_argument("--epochs", type=int, default=6)
    s.add_argument("--iters", type=int, default=25)
    s.add_argument("--n_train", type=int, default=8)
    s.add_argument("--n_test", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--full_width", action="store_true", help="keep the planned feature widths (slow on CPU)")
    s.add_argument("--workdir", default=None, help="keep datasets and models here instead of a temporary folder")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.mode == "model":
        rows = {"model": evaluate_rules(args.model_folder, args.images, args.clean, args.f)}
    else:
        rows = {}
        for kind in args.kinds:
            print(f"training on synthetic '{kind}' noise ...", flush=True)
            with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
                rows[kind] = run_synthetic(kind, args.num_classes, args.epochs, args.iters, args.n_train,
                                           args.n_test, args.seed, Path(tmp), narrow=not args.full_width)
            print(kind, rows[kind], flush=True)
    cols = ["imperfect", *FUSION_RULES]
    print("| setting | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for key, res in rows.items():
        print(f"| {key} | " + " | ".join(f"{res[c]:.3f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
