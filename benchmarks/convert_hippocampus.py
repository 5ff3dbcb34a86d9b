"""Convert the hippocampus MRI data (MSD Task04) into a 3D nnU-Net raw dataset.

Input layout (``--data``, default ``../shared/data`` relative to the repository root)::

    hippocampus/images/hippocampus_xxx.nii.gz   T1 MRI (mixed float32 / uint8)
    hippocampus/labels/hippocampus_xxx.nii.gz   0 background, 1 anterior, 2 posterior

Output: ``$nnUNet_raw/DatasetXXX_<name>/`` (or ``--output_folder``) with ``imagesTr/hippocampus_xxx_0000.nii.gz``
(cast to float32, geometry kept), ``labelsTr/hippocampus_xxx.nii.gz`` (uint8) and ``dataset.json``;
``--num_test`` cases go to ``imagesTs/`` + ``labelsTs/``.

Example::

    nnUNet_raw=/path/to/nnUNet_raw python benchmarks/convert_hippocampus.py -d 504 --num_cases 20
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # also when loaded by file path (tests) rather than run as a script
    sys.path.insert(0, str(HERE))
from raw_output import (add_split_and_output_arguments, output_folder_for, run_conversion,  # noqa: E402
                        split_cases, staged_dataset)

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
LABELS = {"background": 0, "anterior": 1, "posterior": 2}


def convert(data: Path, dataset_id: int, name: str = "Hippocampus", num_test: int = 0, seed: int = 0,
            num_cases: int | None = None, output_folder: Path | None = None, overwrite: bool = False) -> Path:
    """Write the nnU-Net raw dataset and return its folder."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    src = Path(data) / "hippocampus"
    if not (src / "images").is_dir() or not (src / "labels").is_dir():
        raise FileNotFoundError(f"{src}/images or {src}/labels not found; pass --data pointing to the folder "
                                f"holding hippocampus/")
    output_folder = output_folder_for(dataset_id, name, output_folder, overwrite)
    cases = sorted(p.name[: -len(".nii.gz")] for p in (src / "images").glob("*.nii.gz"))
    cases, test = split_cases(cases, num_cases, num_test, seed)

    with staged_dataset(output_folder, with_test=bool(test)) as tmp:
        for case in cases:
            lab_path = src / "labels" / f"{case}.nii.gz"
            if not lab_path.is_file():
                raise FileNotFoundError(f"missing label {lab_path}")
            img = sitk.ReadImage(str(src / "images" / f"{case}.nii.gz"))
            lab = sitk.ReadImage(str(lab_path))
            if img.GetSize() != lab.GetSize():
                raise ValueError(f"{case}: image size {img.GetSize()} != label size {lab.GetSize()}")
            values = np.unique(sitk.GetArrayViewFromImage(lab))
            if not set(values.tolist()) <= set(LABELS.values()):
                raise ValueError(f"{case}: unexpected label values {values.tolist()}")
            img = sitk.Cast(img, sitk.sitkFloat32)
            lab = sitk.Cast(lab, sitk.sitkUInt8)
            lab.CopyInformation(img)  # identical geometry for nnU-Net's checks
            split = "Ts" if case in test else "Tr"
            sitk.WriteImage(img, str(tmp / f"images{split}" / f"{case}_0000.nii.gz"))
            sitk.WriteImage(lab, str(tmp / f"labels{split}" / f"{case}.nii.gz"))
        generate_dataset_json(
            str(tmp), {0: "MRI"}, LABELS, len(cases) - len(test), ".nii.gz", dataset_name=output_folder.name,
            reference="Medical Segmentation Decathlon Task04 (Simpson et al. 2019; Antonelli et al. 2022)",
            license="CC-BY-SA 4.0", converted_by="benchmarks/convert_hippocampus.py",
            description="Hippocampus head (anterior) and body (posterior), T1 MRI")
    return output_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset_id", type=int, required=True, help="id of the new nnU-Net dataset")
    parser.add_argument("--name", default="Hippocampus", help="dataset name (default Hippocampus)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder holding hippocampus/ (default ../shared/data)")
    add_split_and_output_arguments(parser)
    args = parser.parse_args(argv)
    return run_conversion(lambda: convert(args.data, args.dataset_id, args.name, args.num_test, args.seed,
                                          args.num_cases, args.output_folder, args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
