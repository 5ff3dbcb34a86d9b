"""Does the uncertain band hold the revision's mistakes? For a dataset written by ``nnUNetv2_nl_revise
--uncertain_band`` and the true labels of its cases: the band's share of the voxels, the error rate of the hard
revision inside and outside the band, and the share of all its wrong voxels that the band holds.

Usage: python benchmarks/band_analysis.py REVISED_BAND_DATASET TRUTH_FOLDER [...more DATASET TRUTH pairs]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nnunet_noisylabels.common.raw_dataset import read_label


def analyse(dataset: Path, truth: Path) -> dict:
    """Voxel counts over the dataset's revised cases (see the module docstring)."""
    djson = json.loads((dataset / "dataset.json").read_text())
    manifest = json.loads((dataset / "labelsTr_revision.json").read_text())
    band_info = manifest.get("uncertain_band", {})
    if not band_info.get("enabled"):
        raise SystemExit(f"{dataset} has no uncertain band (revise it with --uncertain_band)")
    ignore, fe = band_info["ignore_label"], djson["file_ending"]
    n = band = wrong = wrong_in_band = 0
    for case, rec in manifest["cases"].items():
        if "band_voxels" not in rec:
            continue
        labels = read_label(dataset / "labelsTr" / f"{case}{fe}", djson)[0]
        hard = read_label(dataset / band_info["hard_labels_folder"] / f"{case}{fe}", djson)[0]
        true = read_label(truth / f"{case}{fe}", djson)[0]
        b, err = labels == ignore, hard != true
        n += b.size
        band += int(b.sum())
        wrong += int(err.sum())
        wrong_in_band += int((err & b).sum())
    return {"dataset": dataset.name, "band_share": band / n, "error_in_band": wrong_in_band / max(band, 1),
            "error_outside_band": (wrong - wrong_in_band) / max(n - band, 1),
            "errors_held_by_band": wrong_in_band / max(wrong, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pairs", nargs="+", help="DATASET TRUTH [DATASET TRUTH ...]")
    a = p.parse_args(argv)
    if len(a.pairs) % 2:
        p.error("give DATASET TRUTH pairs")
    rows = [analyse(Path(d), Path(t)) for d, t in zip(a.pairs[::2], a.pairs[1::2])]
    print("| dataset | band share of voxels | error rate in the band | error rate outside | share of the errors in "
          "the band |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['dataset']} | {r['band_share']:.4f} | {r['error_in_band']:.3f} | {r['error_outside_band']:.4f} "
              f"| {r['errors_held_by_band']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
