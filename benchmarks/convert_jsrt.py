"""Convert the JSRT chest X-ray data (SCR masks) into a 2D nnU-Net raw dataset.

Input layout (``--data``, default ``../shared/data`` relative to the repository root)::

    jsrt/images/JPCLNxxx.png            8-bit grey, 256x256
    jsrt/{lung,heart,clavicle}/JPCLNxxx.png   0/255 masks (clavicle overlaps lung)

Output: ``$nnUNet_raw/DatasetXXX_<name>/`` (or ``--output_folder``) with ``imagesTr/JPCLNxxx_0000.png``,
``labelsTr/JPCLNxxx.png`` and ``dataset.json``; ``--num_test`` cases go to ``imagesTs/`` + ``labelsTs/``.

``--structures lung`` (or heart / clavicle) gives a binary dataset; ``--structures all`` a multi-class map
lung=1, heart=2, clavicle=3 painted in that order, so that clavicle > heart > lung where masks overlap.
``--size 128`` (or 64) downsamples images (anti-aliased) and masks (anti-aliased, threshold 0.5) for CPU runs.

Example::

    nnUNet_raw=/path/to/nnUNet_raw python benchmarks/convert_jsrt.py -d 501 --structures lung --size 64
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.transform import resize

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # also when loaded by file path (tests) rather than run as a script
    sys.path.insert(0, str(HERE))
from raw_output import (add_split_and_output_arguments, output_folder_for, run_conversion,  # noqa: E402
                        split_cases, staged_dataset)

STRUCTURES = ("lung", "heart", "clavicle")  # painting order: later wins (clavicle > heart > lung)
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _resize_mask(m: np.ndarray, size: int) -> np.ndarray:
    return resize(m.astype(np.float32), (size, size), order=1, anti_aliasing=True) > 0.5


def _resize_image(img: np.ndarray, size: int) -> np.ndarray:
    out = resize(img.astype(np.float32), (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def build_label(jsrt: Path, case: str, structures: list[str], size: int | None) -> np.ndarray:
    """Label map of one case: binary for one structure, lung=1/heart=2/clavicle=3 for several."""
    shape = None
    seg = None
    for value, s in enumerate(structures, start=1):
        p = jsrt / s / f"{case}.png"
        if not p.is_file():
            raise FileNotFoundError(f"missing mask {p}; every image needs a {s} mask")
        m = np.array(Image.open(p)) > 127
        if size:
            m = _resize_mask(m, size)
        if seg is None:
            shape = m.shape
            seg = np.zeros(shape, np.uint8)
        elif m.shape != shape:
            raise ValueError(f"{p}: mask shape {m.shape} differs from {shape}")
        seg[m] = value
    return seg


def convert(data: Path, dataset_id: int, name: str, structures: list[str], size: int | None = None,
            num_test: int = 0, seed: int = 0, num_cases: int | None = None, output_folder: Path | None = None,
            overwrite: bool = False) -> Path:
    """Write the nnU-Net raw dataset and return its folder."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    jsrt = Path(data) / "jsrt"
    if not (jsrt / "images").is_dir():
        raise FileNotFoundError(f"{jsrt / 'images'} not found; pass --data pointing to the folder holding jsrt/")
    output_folder = output_folder_for(dataset_id, name, output_folder, overwrite)
    cases = sorted(p.stem for p in (jsrt / "images").glob("*.png"))
    cases, test = split_cases(cases, num_cases, num_test, seed)

    with staged_dataset(output_folder, with_test=bool(test)) as tmp:
        for case in cases:
            img = np.array(Image.open(jsrt / "images" / f"{case}.png").convert("L"))
            if size:
                img = _resize_image(img, size)
            seg = build_label(jsrt, case, structures, size)
            if seg.shape != img.shape:
                raise ValueError(f"{case}: image shape {img.shape} != mask shape {seg.shape}")
            split = "Ts" if case in test else "Tr"
            Image.fromarray(img).save(tmp / f"images{split}" / f"{case}_0000.png")
            Image.fromarray(seg).save(tmp / f"labels{split}" / f"{case}.png")
        labels = {"background": 0, **{s: i for i, s in enumerate(structures, start=1)}}
        generate_dataset_json(
            str(tmp), {0: "X-ray"}, labels, len(cases) - len(test), ".png", dataset_name=output_folder.name,
            reference="JSRT (Shiraishi et al. 2000) with SCR masks (van Ginneken et al., MedIA 2006)",
            license="JSRT/SCR terms, research use only", converted_by="benchmarks/convert_jsrt.py",
            description=f"JSRT {'+'.join(structures)}"
                        + (f", downsampled to {size}x{size}" if size else "")
                        + ("; overlaps resolved clavicle > heart > lung" if len(structures) > 1 else ""))
    return output_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset_id", type=int, required=True, help="id of the new nnU-Net dataset")
    parser.add_argument("--name", default=None, help="dataset name (default JSRT<Structures>[<size>])")
    parser.add_argument("--structures", default="lung", choices=list(STRUCTURES) + ["all"],
                        help="one structure (binary) or all (lung=1, heart=2, clavicle=3; clavicle > heart > lung)")
    parser.add_argument("--size", type=int, default=None, help="downsample to SIZE x SIZE (e.g. 128 or 64)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding jsrt/ (default ../shared/data)")
    add_split_and_output_arguments(parser)
    args = parser.parse_args(argv)
    structures = list(STRUCTURES) if args.structures == "all" else [args.structures]
    name = args.name or "JSRT" + "".join(s.capitalize() for s in structures) + (str(args.size) if args.size else "")
    return run_conversion(lambda: convert(args.data, args.dataset_id, name, structures, args.size, args.num_test,
                                          args.seed, args.num_cases, args.output_folder, args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
