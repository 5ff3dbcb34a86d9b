"""``nnUNetv2_nl_revise``: revise the imperfect labels of a raw nnU-Net dataset (argparse layer only)."""
from __future__ import annotations

import argparse
import sys

from nnunet_noisylabels.revision.base import DEFAULT_TRAINERS, METHODS, REPORT_DIR


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_nl_revise",
        description="Train a noise identification network on the clean pairs of a raw nnU-Net dataset "
                    "(labelsTr = imperfect labels, labelsTr_clean = clean labels of a few cases), predict every "
                    "imperfect-only case and rewrite labelsTr with the revised pseudo masks. The originals are kept "
                    "in labelsTr_imperfect/ (a re-run starts from there); labelsTr_revision.json records the "
                    "provenance. Afterwards run nnUNetv2_plan_and_preprocess and nnUNetv2_train as usual.")
    p.add_argument("-d", required=True, help="Dataset id, name (DatasetXXX_Name, looked up in nnUNet_raw) or folder.")
    p.add_argument("--method", choices=METHODS, default="nin",
                   help="'nin': noise identification network on image + imperfect label (default). 'clean_only': "
                        "plain nnU-Net trained on the image channels of the clean pairs alone (baseline). "
                        "'ensemble': both, revising with the mean of their softmax probabilities (better labels "
                        "where plain nnU-Net on the clean pairs is itself good, at twice the training time; see "
                        "BENCHMARKS.md).")
    p.add_argument("-tr", default=None,
                   help=f"Trainer class. Default: {DEFAULT_TRAINERS['nin']} for --method nin (and the network of "
                        f"--method ensemble), {DEFAULT_TRAINERS['clean_only']} for clean_only.")
    p.add_argument("--clean_only_tr", default=None,
                   help=f"Trainer of the clean-only member of --method ensemble. Default: "
                        f"{DEFAULT_TRAINERS['clean_only']}.")
    p.add_argument("-c", default=None, help="nnU-Net configuration. Default: 2d for 2D data, 3d_fullres for 3D.")
    p.add_argument("-f", default="all", help="Fold to train and predict with. Default: all (few clean pairs).")
    p.add_argument("-device", default=None, choices=["cuda", "cpu", "mps"],
                   help="Device. Default: cuda if available, else cpu.")
    p.add_argument("-np", type=int, default=1,
                   help="Processes for preprocessing and prediction (1 = sequential). Default: 1.")
    p.add_argument("--aux_id", type=int, default=None,
                   help="Dataset id of the auxiliary dataset. Default: the id of an earlier one of this dataset, "
                        "else the first free id in 500..999.")
    p.add_argument("--model", default=None,
                   help="Reuse a trained model folder (.../Trainer__Plans__configuration) instead of training "
                        "(with --method ensemble: the noise identification network's).")
    p.add_argument("--clean_only_model", default=None,
                   help="With --method ensemble: reuse a trained clean-only model folder (e.g. of an earlier "
                        "--method clean_only run) instead of training it.")
    p.add_argument("-o", "--output_dataset", default=None,
                   help="Write a new dataset (DatasetXXX_Name in nnUNet_raw, or a folder) instead of revising in "
                        "place; the source dataset is left untouched.")
    p.add_argument("--truth", default=None,
                   help="Folder of true labels (same file names) to report Dice/HD95 of imperfect and revised "
                        "labels against, e.g. the labelsTr of the clean dataset a corrupted copy was made from.")
    p.add_argument("--report_only", action="store_true",
                   help="Only (re)write the report of an already revised dataset (e.g. with --truth); no training.")
    p.add_argument("--no_noise_maps", action="store_true", help="Do not save per-case noise maps.")
    p.add_argument("--no_report", action="store_true", help="Do not write the revision report.")
    p.add_argument("--remove_aux", action="store_true",
                   help="Delete the auxiliary raw dataset afterwards (the trained model stays in nnUNet_results).")
    p.add_argument("--no_keep_consistent", dest="keep_consistent", action="store_false",
                   help="Revise every imperfect-only case. By default the cases whose revision barely changes their "
                        "label keep the imperfect label, when such a group stands clearly apart from the rest "
                        "(Otsu split of the per-case relative change; see --consistency_ratio).")
    p.add_argument("--consistency_ratio", type=float, default=3.0,
                   help="The kept group's mean relative change must be at most 1/RATIO of the other group's. "
                        "Default: 3.")
    p.add_argument("--disable_tta", action="store_true",
                   help="No test-time mirroring when predicting the revisions (as nnUNetv2_predict --disable_tta; "
                        "4-8x faster on CPU, slightly less accurate).")
    p.add_argument("--realign", action="store_true",
                   help="For labels that can be misplaced as a whole (drawn shifted or rotated): move each class of "
                        "an imperfect label rigidly onto the revision's first prediction (ensemble: the two models' "
                        "average) when that raises their Dice by --realign_min_gain, and let the network predict "
                        "those cases again from the realigned label. Labels that are only too large, too small or "
                        "noisy at the boundary are not moved. Method nin or ensemble.")
    p.add_argument("--realign_min_gain", type=float, default=0.05,
                   help="Dice a rigid move must gain (against the first prediction) for a class to be moved. "
                        "Default: 0.05.")
    p.add_argument("--realign_rounds", type=int, default=3,
                   help="Realign-and-predict rounds: each moves the label onto the latest prediction, which the "
                        "network drew partly towards the misplaced label, and predicts again. Default: 3.")
    p.add_argument("--cpu_plans", action="store_true",
                   help="Train the revision models with the CPU variant of the configuration (CONFIGURATION_cpu: "
                        "narrower features, batch 2, same preprocessed data; see nnUNetv2_nl_plan_cpu), e.g. for 3D "
                        "data without a GPU.")
    p.add_argument("--uncertain_band", type=float, nargs="?", const=0.5, default=None, metavar="MARGIN",
                   help="Mark the voxels of the revised cases that the revision is unsure about (top-1 minus top-2 "
                        "probability below MARGIN, default 0.5; with --method ensemble also where the two models "
                        "disagree) with nnU-Net's ignore label, declared in the new dataset's dataset.json: every "
                        "nnU-Net trainer skips them, NoiseRobustTrainer learns them from its peer. The hard revision "
                        "is kept in labelsTr_hard/. Clean pairs never carry it. Needs -o.")
    p.add_argument("--no_pbar", action="store_true", help="Disable progress bars.")
    return p


def options_from_args(args: argparse.Namespace):
    """The :class:`~nnunet_noisylabels.revision.api.RevisionOptions` that the parsed arguments ask for."""
    from nnunet_noisylabels.revision.api import RevisionOptions

    return RevisionOptions(method=args.method, output_dataset=args.output_dataset, aux_id=args.aux_id, trainer=args.tr,
                            configuration=args.c, fold=args.f, device=args.device, num_processes=args.np,
                            model_folder=args.model, clean_only_trainer=args.clean_only_tr,
                            clean_only_model_folder=args.clean_only_model, save_noise_maps=not args.no_noise_maps,
                            truth_folder=args.truth, report=not args.no_report, keep_aux=not args.remove_aux,
                            keep_consistent=args.keep_consistent, consistency_ratio=args.consistency_ratio,
                            use_mirroring=not args.disable_tta, realign=args.realign,
                            realign_min_gain=args.realign_min_gain, realign_rounds=args.realign_rounds,
                            cpu_plans=args.cpu_plans, uncertain_band=args.uncertain_band,
                            progress=not args.no_pbar)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run :func:`~nnunet_noisylabels.revision.api.revise_dataset`.

    Returns:
        0 on success, 2 on bad input (nothing written), 1 when a later step failed (labelsTr left unchanged, or,
        when only the report failed, the revised labels written and the message saying so).
    """
    args = build_parser().parse_args(argv)
    from nnunet_noisylabels.revision.api import revise_dataset
    from nnunet_noisylabels.revision.base import RevisionReportError
    from nnunet_noisylabels.revision.inputs import resolve_dataset_folder
    from nnunet_noisylabels.revision.report import write_revision_report

    try:
        if args.report_only:
            folder = resolve_dataset_folder(args.d)
            summary = write_revision_report(folder, truth_folder=args.truth, progress=not args.no_pbar)
            print(f"Report of {summary['mean']['num_cases']} revised case(s) written to {folder / REPORT_DIR}")
            return 0
        revise_dataset(args.d, options_from_args(args))
    except RevisionReportError as e:  # after the labels were written: do not claim they were left alone
        print(f"nnUNetv2_nl_revise: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"nnUNetv2_nl_revise: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a failed training/prediction: say that the labels are intact
        print(f"nnUNetv2_nl_revise: failed ({type(e).__name__}: {e}). labelsTr/ was not changed; the original "
              f"imperfect labels are in labelsTr_imperfect/ if that folder exists.", file=sys.stderr)
        return 1
    return 0


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
