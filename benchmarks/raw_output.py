"""Shared steps of the dataset converters: where the raw dataset goes, the test split, and an atomic write.

The converters build the whole dataset in a temporary folder beside the target and move it into place only when
every case and ``dataset.json`` are written, so a failed run never leaves a half-written dataset in nnUNet_raw.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np


def output_folder_for(dataset_id: int, name: str, output_folder: Path | None, overwrite: bool) -> Path:
    """``output_folder``, or ``$nnUNet_raw/DatasetXXX_<name>``; refuses an existing folder unless ``overwrite``."""
    if output_folder is None:
        raw = os.environ.get("nnUNet_raw")
        if not raw:
            raise ValueError("set nnUNet_raw or pass --output_folder")
        output_folder = Path(raw) / f"Dataset{dataset_id:03d}_{name}"
    output_folder = Path(output_folder)
    if output_folder.exists() and not overwrite:
        raise FileExistsError(f"{output_folder} exists; pass --overwrite to replace it")
    return output_folder


def split_cases(cases: list[str], num_cases: int | None, num_test: int, seed: int) -> tuple[list[str], set[str]]:
    """The first ``num_cases`` cases (all if None) and a seeded random subset of ``num_test`` of them for testing."""
    if num_cases:
        cases = cases[:num_cases]
    if num_test < 0 or num_test >= len(cases):
        raise ValueError(f"--num_test must be in [0, {len(cases) - 1}], got {num_test}")
    rng = np.random.default_rng(seed)
    test = set(rng.choice(cases, size=num_test, replace=False).tolist()) if num_test else set()
    return cases, test


@contextlib.contextmanager
def staged_dataset(output_folder: Path, with_test: bool) -> Iterator[Path]:
    """Yield a temporary folder with ``imagesTr``/``labelsTr`` (and ``imagesTs``/``labelsTs`` if ``with_test``).

    When the block finishes it replaces ``output_folder``; when it raises, the temporary folder is removed and
    ``output_folder`` is left as it was.
    """
    output_folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_{output_folder.name}_", dir=output_folder.parent))
    try:
        for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if with_test else ()):
            (tmp / sub).mkdir()
        yield tmp
        if output_folder.exists():
            shutil.rmtree(output_folder)
        tmp.rename(output_folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def add_split_and_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The converters' common options: test split, case limit, seed, output folder, overwrite."""
    parser.add_argument("--num_test", type=int, default=0, help="cases held out in imagesTs/labelsTs")
    parser.add_argument("--num_cases", type=int, default=None, help="use only the first N cases (quick tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test split")
    parser.add_argument("--output_folder", type=Path, default=None, help="default $nnUNet_raw/DatasetXXX_NAME")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run_conversion(convert: Callable[[], Path]) -> int:
    """Run a converter for a command line: print the folder written, or the error; return the exit status."""
    try:
        out = convert()
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
