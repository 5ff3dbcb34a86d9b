"""``nnUNetv2_nl_corrupt``: write a noisy-label copy of a clean nnU-Net raw dataset.

Parses arguments and calls :func:`nnunet_noisylabels.corruption.dataset.corrupt_dataset`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from nnunet_noisylabels.corruption.noise import ALL_NOISE_TYPES, BETA_TYPES, NOISE_FUNCTIONS

EPILOG = """\
parameters (--param key=value; a range is low,high and is sampled per case and class):
  dilate / erode    radius=3,9 [voxels]                     (or --beta: target changed-pixel ratio)
  affine            max_rotation=15 [deg] max_shift=0.1 [x bbox diagonal]   (or --beta)
  elastic           magnitude=2,6 [voxels] sigma=8          (or --beta)
  edge              fraction=0.1 radius=6,12 p_add=0.5
  markov            T=180 theta1=0.8 theta2=0.05 theta3=0.2 sigma=2   (Yao et al. ICLR 2023)
  drop_components   p=0.5 at_least_one=true keep_one=true
  box               margin=0 [voxels per side]
  scribble          fraction=1.0 width=1 erode=0
  mixture           --mixture dilate=0.5 markov=0.5 [--param markov.T=100 ...]
  per-label         --param class3.T=100 class3.theta2=0.02   (overrides for label 3 only)
  alpha_beta        --beta 0.5 [--param types=dilate,erode,affine]      (Li et al. MICCAI 2021)

examples:
  nnUNetv2_nl_corrupt -d 501 -o 511 --noise alpha_beta --alpha 0.7 --beta 0.5 --clean_fraction 0.1
  nnUNetv2_nl_corrupt -d 501 -o 512 --noise box --param margin=0,3 --clean_count 10
  nnUNetv2_nl_corrupt -d 502 -o 513 --noise markov --param T=180 theta1=0.2 class3.T=100 class3.theta2=0.02
"""


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, '3,9' -> [3, 9], 'true' -> True, 'dilate,erode' -> ['dilate', 'erode']."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        return json.loads(t)
    except json.JSONDecodeError:
        pass
    if "," in t:
        return [parse_value(p) for p in t.split(",") if p.strip()]
    return t


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """['radius=3,9', 'markov.T=100'] -> {'radius': [3, 9], 'markov': {'T': 100}}."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--param expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise ValueError(f"--param expects key=value, got {pair!r}")
        if "." in key:
            outer, inner = key.split(".", 1)
            out.setdefault(outer, {})[inner] = parse_value(value)
        else:
            out[key] = parse_value(value)
    return out


def build_params(noise: str, param_pairs: list[str] | None, mixture: list[str] | None,
                 beta: float | None) -> dict[str, Any]:
    """Assemble the noise parameters from --param, --mixture and --beta."""
    params = parse_params(param_pairs)
    if mixture:
        if noise != "mixture":
            raise ValueError("--mixture is only used with --noise mixture")
        mix = parse_params(mixture)
        params["mixture"] = {k: float(v) for k, v in mix.items()}
    if beta is not None:
        if noise in BETA_TYPES or noise == "alpha_beta":
            params["beta"] = beta
        elif noise == "mixture":
            mixed = [t for t in params.get("mixture", {}) if t in BETA_TYPES]
            if not mixed:
                raise ValueError(f"--beta needs at least one of {BETA_TYPES} in --mixture")
            for t in mixed:
                params.setdefault(t, {})["beta"] = beta
        else:
            raise ValueError(f"--beta applies to {', '.join(BETA_TYPES)}, mixture and alpha_beta, not to '{noise}'")
    if noise == "alpha_beta" and isinstance(params.get("types"), str):
        params["types"] = [params["types"]]
    return params


def split_class_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Move 'classN' entries (from --param classN.key=value) into per-label overrides {N: {key: value}}."""
    rest, per_class = {}, {}
    for k, v in params.items():
        if k.startswith("class") and k[5:].isdigit():
            if not isinstance(v, dict):
                raise ValueError(f"per-class parameters are given as {k}.KEY=VALUE, got {k}={v!r}")
            per_class[int(k[5:])] = v
        else:
            rest[k] = v
    return rest, per_class


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_nl_corrupt", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a NEW nnU-Net raw dataset whose labelsTr/ holds corrupted (noisy or weak) labels, with "
                    "the clean labels of a seeded clean subset in labelsTr_clean/ and a JSON manifest (noise, "
                    "parameters and Dice vs clean per case). The source dataset is never modified.")
    p.add_argument("-d", required=True, help="source dataset (id or DatasetXXX_Name) in nnUNet_raw")
    p.add_argument("-o", required=True, type=int, help="id of the new dataset")
    p.add_argument("--name", default=None, help="name of the new dataset (default <source name>_<noise>)")
    p.add_argument("--noise", required=True, choices=ALL_NOISE_TYPES, help="noise type, see below")
    p.add_argument("--alpha", type=float, default=1.0, help="fraction of training cases to corrupt (default 1)")
    p.add_argument("--beta", type=float, default=None,
                   help="target ratio changed pixels / foreground pixels (dilate, erode, affine, elastic, "
                        "alpha_beta)")
    clean = p.add_mutually_exclusive_group()
    clean.add_argument("--clean_fraction", type=float, default=None, help="fraction of cases in the clean subset")
    clean.add_argument("--clean_count", type=int, default=None, help="number of cases in the clean subset")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--param", nargs="+", action="extend", metavar="KEY=VALUE", help="native noise parameters")
    p.add_argument("--mixture", nargs="+", action="extend", metavar="TYPE=PROB",
                   help=f"noise types and probabilities for --noise mixture ({', '.join(NOISE_FUNCTIONS)})")
    p.add_argument("--labels", nargs="+", type=int, default=None,
                   help="foreground labels to corrupt (default: all labels of dataset.json)")
    p.add_argument("--copy_images", action="store_true", help="copy images instead of linking them")
    p.add_argument("-np", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing target dataset")
    p.add_argument("--no_pbar", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    from nnunet_noisylabels.corruption.dataset import MANIFEST_NAME, corrupt_dataset

    args = get_parser().parse_args(argv)
    try:
        params, class_params = split_class_params(build_params(args.noise, args.param, args.mixture, args.beta))
        out = corrupt_dataset(args.d, args.o, args.noise, params, name=args.name, alpha=args.alpha,
                              clean_fraction=args.clean_fraction, clean_count=args.clean_count, seed=args.seed,
                              copy_images=args.copy_images, num_processes=args.np, overwrite=args.overwrite,
                              labels=args.labels, class_params=class_params, pbar=not args.no_pbar)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # bad input, refused before anything was written
        print(f"nnUNetv2_nl_corrupt: error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:  # failed while writing; the half-written dataset was removed
        print(f"nnUNetv2_nl_corrupt: error: {e} (no dataset was written)", file=sys.stderr)
        return 1
    with open(out / MANIFEST_NAME) as f:
        summary = json.load(f)["summary"]
    print(f"wrote {out}")
    pre = os.environ.get("nnUNet_preprocessed")
    if pre and (Path(pre) / out.name).exists():
        print(f"  note: {Path(pre) / out.name} predates these labels; re-run nnUNetv2_plan_and_preprocess "
              f"-d {args.o}")
    print(f"  corrupted cases: {summary['num_corrupted']}/{summary['num_cases']}, clean subset: "
          f"{summary['num_clean_subset']}, mean Dice imperfect vs clean: {summary['mean_dice']:.4f} "
          f"(corrupted cases only: {summary['mean_dice_corrupted']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
