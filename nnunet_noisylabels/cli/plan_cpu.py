"""``nnUNetv2_nl_plan_cpu``: add a CPU configuration (``<configuration>_cpu``) to a dataset's nnU-Net plans."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_nl_plan_cpu",
        description="Add the configuration CONFIGURATION_cpu to the plans of a planned and preprocessed dataset: it "
                    "inherits CONFIGURATION (same preprocessed data, patch size and network topology) with narrower "
                    "features and a smaller batch, so that it trains on a CPU. Nothing is re-preprocessed; train and "
                    "predict with -c CONFIGURATION_cpu.")
    p.add_argument("-d", required=True, help="dataset id or name (planned in nnUNet_preprocessed)")
    p.add_argument("-c", default="3d_fullres", help="configuration to derive from (default 3d_fullres)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--feature_scale", type=float, default=0.5,
                   help="width of every stage relative to the planned one (default 0.5)")
    p.add_argument("--batch_size", type=int, default=2, help="batch size (default 2)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nnunet_noisylabels.common.cpu_plans import add_cpu_configuration

    try:
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        pre = os.environ.get("nnUNet_preprocessed")
        if not pre:
            raise FileNotFoundError("nnUNet_preprocessed is not set; export nnUNet_preprocessed=/path/to/it")
        try:
            name = maybe_convert_to_dataset_name(args.d)
        except RuntimeError as e:
            raise FileNotFoundError(str(e)) from None
        config = add_cpu_configuration(Path(pre) / name, args.c, args.p, args.feature_scale, args.batch_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"nnUNetv2_nl_plan_cpu: error: {e}", file=sys.stderr)
        return 2
    print(f"added configuration {config} to {Path(pre) / name / (args.p + '.json')}; train with "
          f"nnUNetv2_train {args.d} {config} FOLD -p {args.p} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
