"""Report on a label revision: how much each label changed, which kind of noise was flagged, and, when the true
labels are known (e.g. a corrupted copy of a clean dataset), whether the revised labels are closer to the truth.

Outputs (in ``<dataset>/labelsTr_revision_report/``): ``report.json`` (per case and mean), ``report.csv`` (one row
per case), ``report.md`` (summary table) and ``overlays/*.png`` (image, imperfect, revised, truth, noise map; the
middle slice of 3D volumes) for the worst and best cases.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_noisylabels.common.metrics import dice, hd95
from nnunet_noisylabels.common.raw_dataset import load_json, reader_writer, spatial_view, write_json_atomic
from nnunet_noisylabels.common.safe_fs import refuse_symlinks
from nnunet_noisylabels.revision.base import (MANIFEST_NAME, NOISE_OVER, NOISE_SWAP, NOISE_UNDER, REPORT_DIR,
                                              progress_bar)
from nnunet_noisylabels.revision.output import noise_map, noise_statistics


def _finite_mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def compare_to_truth(seg: np.ndarray, truth: np.ndarray, classes: list[int], spacing) -> dict:
    """Per-class and mean (over foreground classes) Dice and HD95 of ``seg`` against ``truth``.

    Args:
        seg, truth: integer label maps (X, Y[, Z]) of equal shape.
        classes: foreground class values.
        spacing: voxel size in array axis order.
    """
    d = {int(c): dice(seg == c, truth == c) for c in classes}
    h = {int(c): hd95(seg == c, truth == c, spacing) for c in classes}
    return {"dice": float(np.mean(list(d.values()))), "hd95": _finite_mean(h.values()),
            "dice_per_class": d, "hd95_per_class": h}


def case_metrics(imperfect: np.ndarray, revised: np.ndarray, nmap: np.ndarray | None, truth: np.ndarray | None,
                 classes: list[int], spacing) -> dict:
    """All report numbers of one case (label maps (X, Y[, Z])).

    ``fraction_*`` describe the change imperfect -> revised; ``flagged_over`` / ``flagged_under`` are the shares of
    voxels that the saved noise map flags (the network's branches when it had them, else the same difference).
    """
    diff = noise_map(imperfect, revised)
    row = noise_statistics(diff)
    if nmap is None:
        nmap = diff
    n = max(nmap.size, 1)
    row["flagged_over"] = float(((nmap == NOISE_OVER) | (nmap == NOISE_SWAP)).sum()) / n
    row["flagged_under"] = float(((nmap == NOISE_UNDER) | (nmap == NOISE_SWAP)).sum()) / n
    fg = max(int((imperfect != 0).sum()), 1)
    # the same, relative to the size of the imperfect foreground
    row["flagged_over_share_of_imperfect_fg"] = row["flagged_over"] * n / fg
    row["flagged_under_share_of_imperfect_fg"] = row["flagged_under"] * n / fg
    if truth is not None:
        a = compare_to_truth(imperfect, truth, classes, spacing)
        b = compare_to_truth(revised, truth, classes, spacing)
        row.update({"dice_imperfect": a["dice"], "dice_revised": b["dice"], "hd95_imperfect": a["hd95"],
                    "hd95_revised": b["hd95"],
                    "dice_imperfect_per_class": a["dice_per_class"], "dice_revised_per_class": b["dice_per_class"],
                    "hd95_imperfect_per_class": a["hd95_per_class"], "hd95_revised_per_class": b["hd95_per_class"]})
    return row


def _middle_slice(arr: np.ndarray) -> np.ndarray:
    # arrays are nnU-Net's (X, Y[, Z]) with the 2D case stored as (1, X, Y): slice the first axis in the middle
    return arr[arr.shape[0] // 2]


def write_overlay_png(path: Path, image: np.ndarray, panels: dict[str, np.ndarray], title: str,
                      num_classes: int) -> None:
    """One row of panels: the image, then each label map (or noise map) overlaid on it.

    Args:
        image: 2D image slice (X, Y).
        panels: title -> 2D label map (X, Y); titles starting with 'noise' use the noise-map colours.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError:  # pragma: no cover - fall back to a plain grid of the label maps
        from skimage.io import imsave

        tiles = [(image - image.min()) / max(float(np.ptp(image)), 1e-8)]
        tiles += [p / max(float(p.max()), 1) for p in panels.values()]
        imsave(str(path), (np.concatenate(tiles, axis=1) * 255).astype(np.uint8), check_contrast=False)
        return
    n = 1 + len(panels)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9))
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("image", fontsize=8)
    label_cmap = plt.get_cmap("tab10", max(num_classes, 2))
    noise_cmap = ListedColormap(["none", "red", "deepskyblue", "yellow"][1:])
    for ax, (name, lab) in zip(axes[1:], panels.items()):
        ax.imshow(image, cmap="gray")
        masked = np.ma.masked_where(lab == 0, lab)
        if name.startswith("noise"):
            ax.imshow(masked, cmap=noise_cmap, vmin=1, vmax=3, alpha=0.7, interpolation="nearest")
        else:
            ax.imshow(masked, cmap=label_cmap, vmin=0, vmax=max(num_classes - 1, 1), alpha=0.5,
                      interpolation="nearest")
        ax.set_title(name, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class _RevisedDataset:
    """Where the report reads from: a revised dataset's folders (from its manifest) and nnU-Net's reader."""

    root: Path
    manifest: dict
    file_ending: str
    classes: list[int]
    labels_dir: Path
    band_dir: Path | None
    ignore_label: int | None
    originals_dir: Path
    noise_dir: Path | None
    truth_dir: Path | None
    rw: object

    @classmethod
    def open(cls, root: Path, truth_folder: str | os.PathLike | None) -> "_RevisedDataset":
        if not (root / MANIFEST_NAME).is_file():
            raise FileNotFoundError(f"{root / MANIFEST_NAME} not found: run nnUNetv2_nl_revise on {root} first.")
        manifest = load_json(root / MANIFEST_NAME)
        djson = load_json(root / "dataset.json")
        fe = djson["file_ending"]
        nm = manifest.get("noise_maps_folder")
        labels_dir = root / manifest["labels_folder"]
        band = manifest.get("uncertain_band", {})
        band_dir = None
        if band.get("enabled"):  # labelsTr carries the ignore label: the revision itself is in labelsTr_hard
            band_dir, labels_dir = labels_dir, root / band["hard_labels_folder"]
        return cls(root=root, manifest=manifest, file_ending=fe,
                   classes=sorted(int(v) for k, v in djson["labels"].items() if int(v) != 0 and k != "ignore"),
                   labels_dir=labels_dir, band_dir=band_dir, ignore_label=band.get("ignore_label"),
                   originals_dir=root / manifest["originals_folder"],
                   noise_dir=root / nm if nm and (root / nm).is_dir() else None,
                   truth_dir=Path(truth_folder) if truth_folder is not None else None,
                   rw=reader_writer(djson, labels_dir / f"{sorted(manifest['cases'])[0]}{fe}"))

    def read(self, folder: Path | None, case_id: str) -> tuple[np.ndarray, dict] | None:
        """(label as nnU-Net reads it, props), or None if there is no such file."""
        path = folder / f"{case_id}{self.file_ending}" if folder is not None else None
        return self.rw.read_seg(str(path)) if path is not None and path.is_file() else None


def write_revision_report(dataset_root: str | os.PathLike, truth_folder: str | os.PathLike | None = None,
                          output_folder: str | os.PathLike | None = None, num_overlays: int = 3,
                          progress: bool = False) -> dict:
    """Evaluate a revised dataset (written by ``nnUNetv2_nl_revise``) and write the report files.

    Args:
        dataset_root: the revised raw dataset (holds ``labelsTr_revision.json``).
        truth_folder: folder of true labels with the same file names (optional); cases without a file there are
            reported without Dice/HD95.
        output_folder: where to write (default ``<dataset_root>/labelsTr_revision_report``).
        num_overlays: PNG overlays for this many worst and this many best revised cases.
        progress: progress bar.

    Returns:
        ``{"cases": {case: row}, "mean": {...}, "overlays": [...]}`` (also written as report.json).
    """
    root = Path(dataset_root)
    ds = _RevisedDataset.open(root, truth_folder)
    out = Path(output_folder) if output_folder is not None else root / REPORT_DIR
    refuse_symlinks([out, out / "overlays"], "Remove the link (or pass another output folder); the report is "
                                             "written only into a real folder.")
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    cases = sorted(ds.manifest["cases"])
    rows = {case_id: _case_row(ds, case_id) for case_id in progress_bar(cases, "Revision report", progress)}
    revised = [c for c in cases if rows[c]["source"] == "revised"]
    mean_keys = ["fraction_changed", "fraction_over", "fraction_under", "fraction_swap", "band_fraction",
                 "flagged_over", "flagged_under", "flagged_over_share_of_imperfect_fg",
                 "flagged_under_share_of_imperfect_fg", "dice_imperfect", "dice_revised", "hd95_imperfect",
                 "hd95_revised"]
    mean = {k: _finite_mean([rows[c].get(k) for c in revised]) for k in mean_keys}
    mean["num_cases"] = len(revised)
    mean["num_with_truth"] = sum("dice_revised" in rows[c] for c in revised)
    overlays, kind = _write_overlays(ds, rows, revised, out / "overlays", num_overlays)

    summary = {"dataset": root.name, "method": ds.manifest.get("method"), "truth_folder": str(ds.truth_dir)
               if ds.truth_dir else None, "noise_maps_from": ds.manifest.get("noise_maps_from"), "mean": mean,
               "cases": rows, "overlays": [str(p.relative_to(out)) for p in overlays], "ranked_by": kind}
    write_json_atomic(_json_safe(_stringify_keys(summary)), out / "report.json")
    _write_csv(rows, out / "report.csv")
    _write_markdown(summary, out / "report.md")
    return summary


def _case_row(ds: _RevisedDataset, case_id: str) -> dict:
    """The report's row of one case: where its label came from and :func:`case_metrics`."""
    imp, props = ds.read(ds.originals_dir, case_id)
    rev = ds.read(ds.labels_dir, case_id)[0]
    nmap = (ds.read(ds.noise_dir, case_id) or (None,))[0]
    truth = (ds.read(ds.truth_dir, case_id) or (None,))[0]
    if truth is not None and truth.shape != imp.shape:
        raise ValueError(f"True label of '{case_id}' has shape {truth.shape[1:]}, the dataset's {imp.shape[1:]}.")
    # evaluated as 2D or 3D arrays with their own spacing
    imp2, spacing = spatial_view(imp, props["spacing"])
    rev2 = spatial_view(rev, props["spacing"])[0]
    nmap2 = None if nmap is None else spatial_view(nmap, props["spacing"])[0]
    truth2 = None if truth is None else spatial_view(truth, props["spacing"])[0]
    rec = ds.manifest["cases"][case_id]
    row = {"source": rec["source"], "decision": "clean label" if rec["source"] == "clean" else
           "kept imperfect" if rec.get("kept_imperfect") else
           "realigned, predicted again" if rec.get("realigned") else "predicted"}
    row.update(case_metrics(imp2, rev2, nmap2, truth2, ds.classes, spacing))
    if "band_fraction" in rec:
        row["band_fraction"] = rec["band_fraction"]
    return row


def _write_overlays(ds: _RevisedDataset, rows: dict[str, dict], revised: list[str], folder: Path,
                    num_overlays: int) -> tuple[list[Path], str]:
    """Overlays of the worst/best revised cases: by revised Dice when the truth is known, else by how much the
    revision changed. Returns (the files written, the ranking's name)."""
    with_truth = [c for c in revised if "dice_revised" in rows[c]]
    if with_truth:
        ranked = sorted(with_truth, key=lambda c: rows[c]["dice_revised"])
        kind = "revised Dice"
    else:
        ranked = sorted(revised, key=lambda c: -rows[c]["fraction_changed"])
        kind = "fraction changed (most first)"
    k = min(num_overlays, (len(ranked) + 1) // 2)
    picks = [("worst", c) for c in ranked[:k]] + [("best", c) for c in ranked[::-1][:k] if c not in ranked[:k]]
    written = []
    for tag, case_id in picks:
        image_file = ds.root / "imagesTr" / f"{case_id}_0000{ds.file_ending}"
        img = ds.rw.read_images([str(image_file)])[0] if image_file.is_file() else None
        imp = ds.read(ds.originals_dir, case_id)[0][0]
        rev = ds.read(ds.labels_dir, case_id)[0][0]
        panels = {"imperfect": _middle_slice(imp), "revised": _middle_slice(rev)}
        truth = ds.read(ds.truth_dir, case_id)
        if truth is not None:
            panels["truth"] = _middle_slice(truth[0][0])
        saved = ds.read(ds.noise_dir, case_id)
        panels["noise (red over, blue under, yellow both)"] = _middle_slice(
            saved[0][0] if saved is not None else noise_map(imp, rev))
        if ds.band_dir is not None:
            panels["uncertain band (ignore label)"] = _middle_slice(
                (ds.read(ds.band_dir, case_id)[0][0] == ds.ignore_label).astype(np.uint8))
        image = _middle_slice(img[0]) if img is not None else np.zeros_like(panels["imperfect"], dtype=float)
        title = f"{case_id} ({tag}, {kind})"
        if "dice_revised" in rows[case_id]:
            title += f": Dice {rows[case_id]['dice_imperfect']:.3f} -> {rows[case_id]['dice_revised']:.3f}"
        path = folder / f"{tag}_{case_id}.png"
        write_overlay_png(path, image.astype(float), panels, title, len(ds.classes) + 1)
        written.append(path)
    return written, kind


def _stringify_keys(x):
    if isinstance(x, dict):
        return {str(k): _stringify_keys(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_stringify_keys(v) for v in x]
    return x


_CSV_COLUMNS = ["case", "source", "decision", "fraction_changed", "fraction_over", "fraction_under", "fraction_swap",
                "band_fraction",
                "flagged_over", "flagged_under", "flagged_over_share_of_imperfect_fg",
                "flagged_under_share_of_imperfect_fg", "dice_imperfect", "dice_revised",
                "hd95_imperfect", "hd95_revised"]


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "inf" if not math.isfinite(v) else f"{v:.6g}"
    return str(v)


def _write_csv(rows: dict[str, dict], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_CSV_COLUMNS)
        for case_id, row in rows.items():
            w.writerow([case_id] + [_fmt(row.get(k)) for k in _CSV_COLUMNS[1:]])
    os.replace(tmp, path)


def _write_markdown(summary: dict, path: Path) -> None:
    m = summary["mean"]
    lines = [f"# Label revision report: {summary['dataset']}", "",
             f"Method: `{summary['method']}`. Noise maps: {summary['noise_maps_from']}.",
             f"Revised cases: {m['num_cases']} ({m['num_with_truth']} with true labels).", "",
             "| mean over revised cases | value |", "|---|---|"]
    for k in ("fraction_changed", "fraction_over", "fraction_under", "fraction_swap", "band_fraction",
              "flagged_over", "flagged_under", "dice_imperfect", "dice_revised", "hd95_imperfect", "hd95_revised"):
        if k != "band_fraction" or m.get(k) is not None:
            lines.append(f"| {k} | {_fmt(m.get(k))} |")
    lines += ["", "| case | decision | changed | flagged over | flagged under | Dice imperfect | Dice revised | "
                  "HD95 imperfect | HD95 revised |", "|---|---|---|---|---|---|---|---|---|"]
    for case_id, r in summary["cases"].items():
        lines.append(f"| {case_id} | {r['decision']} | {_fmt(r['fraction_changed'])} | {_fmt(r['flagged_over'])} | "
                     f"{_fmt(r['flagged_under'])} | {_fmt(r.get('dice_imperfect'))} | {_fmt(r.get('dice_revised'))}"
                     f" | {_fmt(r.get('hd95_imperfect'))} | {_fmt(r.get('hd95_revised'))} |")
    if summary["overlays"]:
        lines += ["", "## Overlays", ""] + [f"![{p}]({p})" for p in summary["overlays"]]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
